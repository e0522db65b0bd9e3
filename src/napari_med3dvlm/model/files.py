"""Reading the files of a model folder, with one error type whose messages name the file.

What a model folder must hold (the rules are listed for users in docs/published_weights.md):

* ``config.json``: a JSON object; sizes (``hidden_size``, ``vocab_size``, ``image_size``, ...) are
  positive integers, names are strings.
* weights in safetensors only: ``model.safetensors``, or the shards that
  ``model.safetensors.index.json`` lists. Pickled ``.bin`` files are refused unless the caller opts in.
* every shard the index names is a file *inside* the folder: no absolute path, no ``..``, and no
  symbolic link that leads out of it. The one exception is a Hugging Face cache snapshot, whose files
  are links into the same repository's ``blobs`` folder.
* the tokenizer is built as the class that ``tokenizer_config.json`` declares (``tokenizer_class``),
  not as the language model's default class: the two can split the same text into different ids.

Every failure is a `ModelLoadError` (a single line: the file, what is wrong, what to do).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
TOKENIZER_CONFIG = "tokenizer_config.json"

#: What to do when a file that came with the model is damaged.
REDOWNLOAD = "download or copy the model folder again"

#: Config fields that must be positive integers wherever they appear (flat or in ``text_config``).
POSITIVE_INTS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "vocab_size", "max_position_embeddings", "proj_out_num", "mm_hidden_size", "mm_mlp_depth",
    "base_vocab_size",
)
#: Config fields that must be lists of positive integers, and how many.
INT_LISTS = {
    "image_size": 3, "low_input_size": 2, "high_input_size": 2, "low_output_size": 2, "high_output_size": 2,
}
STRINGS = ("model_type", "vision_variant", "vision_stem", "vision_tower", "mm_projector_type", "image_token", "base_language_model")


class ModelLoadError(RuntimeError):
    """A model folder cannot be loaded: a file is missing, damaged, unsafe or does not fit the rest.

    The message is one line naming the file, what is wrong with it and, where it helps, what to do.
    """

    def __init__(self, path, problem: str, action: str = ""):
        self.path = Path(path)
        self.problem = problem
        message = f"{self.path}: {problem}"
        if action:
            message += f"; {action}"
        super().__init__(message if message.endswith(".") else message + ".")


# ---------------------------------------------------------------------- JSON files
def read_json(path, kind: str = "file") -> dict:
    """A JSON object from ``path``; anything else is a `ModelLoadError` naming the file."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(path, f"the {kind} is missing", f"a model folder needs {path.name}; {REDOWNLOAD}")
    if not path.is_file():
        raise ModelLoadError(path, "is not a regular file")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ModelLoadError(path, f"cannot be read ({err.strerror or err})") from err
    if raw.startswith(b"version https://git-lfs"):
        raise ModelLoadError(path, "is a Git LFS pointer, not the file itself", "run `git lfs pull` in the model repository")
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ModelLoadError(path, "is not UTF-8 text, so not JSON", REDOWNLOAD) from err
    except json.JSONDecodeError as err:
        raise ModelLoadError(
            path, f"is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})", REDOWNLOAD
        ) from err
    if not isinstance(value, dict):
        raise ModelLoadError(path, f"holds a JSON {type(value).__name__}, not an object", REDOWNLOAD)
    return value


def check_config_values(config: dict, path) -> None:
    """Refuse wrongly typed sizes and names before any model is built from ``config``."""

    def check(values: dict, where: str) -> None:
        for key in POSITIVE_INTS:
            if key in values and values[key] is not None:
                value = values[key]
                if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                    raise ModelLoadError(path, f"{where}{key} is {value!r}, not a positive integer", "fix the file or " + REDOWNLOAD)
        for key, length in INT_LISTS.items():
            if key in values and values[key] is not None:
                value = values[key]
                good = isinstance(value, list) and len(value) == length and all(
                    isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
                )
                if not good:
                    raise ModelLoadError(
                        path, f"{where}{key} is {value!r}, not a list of {length} positive integers", "fix the file or " + REDOWNLOAD
                    )
        for key in STRINGS:
            if key in values and values[key] is not None and not isinstance(values[key], str):
                raise ModelLoadError(path, f"{where}{key} is {values[key]!r}, not a string", "fix the file or " + REDOWNLOAD)

    check(config, "")
    text = config.get("text_config")
    if text is not None:
        if not isinstance(text, dict):
            raise ModelLoadError(path, f"text_config is {type(text).__name__}, not an object", "fix the file or " + REDOWNLOAD)
        check(text, "text_config.")


#: What building a model from a config raises when the config's values do not fit together.
BUILD_ERRORS = (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError, ZeroDivisionError)


@contextmanager
def config_errors(path):
    """Turn a config that transformers or our modules cannot build into a `ModelLoadError` on ``path``."""
    try:
        yield
    except ModelLoadError:
        raise
    except BUILD_ERRORS as err:
        detail = f"{type(err).__name__}: {err}".splitlines()[0]
        raise ModelLoadError(path, f"describes a model that cannot be built ({detail})", "fix the file or " + REDOWNLOAD) from err


# ---------------------------------------------------------------------- weights
def _hub_blobs(folder: Path) -> Path | None:
    """The ``blobs`` folder of a Hugging Face cache snapshot (``.../snapshots/<revision>``), if it is one."""
    if folder.parent.name == "snapshots" and (folder.parent.parent / "blobs").is_dir():
        return (folder.parent.parent / "blobs").resolve()
    return None


def inside_folder(folder, name: str, listed_in) -> Path:
    """``folder / name`` after checking that it stays inside ``folder`` (see the module docstring)."""
    folder = Path(folder)
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError(listed_in, f"names the shard {name!r}, which is not a file name", REDOWNLOAD)
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts or ".." in windows.parts:
        raise ModelLoadError(
            listed_in, f"names the shard {name!r}, which is outside the model folder",
            "shards must be files inside the folder; " + REDOWNLOAD,
        )
    path = folder / name
    root = folder.resolve()
    target = path.resolve()
    blobs = _hub_blobs(root)
    if not (target.is_relative_to(root) or (blobs is not None and target.is_relative_to(blobs))):
        raise ModelLoadError(
            listed_in, f"names the shard {name!r}, a link to a file outside the model folder",
            "shards must be files inside the folder; copy the file in instead of linking to it",
        )
    return path


def shard_files(folder) -> list[Path]:
    """The shards that ``model.safetensors.index.json`` lists, each checked with `inside_folder`."""
    folder = Path(folder)
    index_path = folder / SAFE_INDEX
    index = read_json(index_path, "shard index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelLoadError(index_path, "has no weight_map (tensor name -> shard file)", REDOWNLOAD)
    names = set()
    for tensor, name in weight_map.items():
        if not isinstance(name, str):
            raise ModelLoadError(index_path, f"maps {tensor!r} to {name!r}, not a file name", REDOWNLOAD)
        if not name.endswith(".safetensors"):
            raise ModelLoadError(
                index_path, f"names the shard {name!r}, which is not a .safetensors file",
                "only safetensors shards are read (pickles are never loaded from an index)",
            )
        names.add(name)
    files = [inside_folder(folder, name, index_path) for name in sorted(names)]
    for path in files:
        if not path.is_file():
            raise ModelLoadError(
                path, f"is missing (listed in {SAFE_INDEX})", "the download looks incomplete; " + REDOWNLOAD
            )
    return files


def _sniff(path: Path) -> str | None:
    """What a file that safetensors cannot open looks like instead, from its first bytes."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError:
        return None
    if head.startswith(b"version https://git-lfs"):
        return "lfs"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "pickle"
    return None


@contextmanager
def open_safetensors(path, device: str = "cpu"):
    """``safetensors.safe_open`` with damaged and foreign files turned into a `ModelLoadError`.

    Errors while reading tensors inside the ``with`` block are converted too.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise ModelLoadError(path, "the weights file is missing", REDOWNLOAD)
    if not path.is_file():
        raise ModelLoadError(path, "is not a regular file")
    try:
        handle = safe_open(str(path), framework="pt", device=device)
    except (SafetensorError, OSError, ValueError) as err:
        kind = _sniff(path)
        if kind == "lfs":
            raise ModelLoadError(path, "is a Git LFS pointer, not the weights", "run `git lfs pull` in the model repository") from err
        if kind == "pickle":
            raise ModelLoadError(
                path, "is a pickled PyTorch checkpoint under a .safetensors name; pickles are never loaded",
                "convert it to safetensors",
            ) from err
        size = path.stat().st_size
        raise ModelLoadError(
            path, f"is not a readable safetensors file ({err}; {size} bytes): it is truncated (an interrupted "
            "download or copy) or in another format", REDOWNLOAD,
        ) from err
    try:
        with handle as f:
            yield f
    except (SafetensorError, OSError) as err:
        raise ModelLoadError(path, f"could not be read to the end ({err})", REDOWNLOAD) from err


# ---------------------------------------------------------------------- tokenizer
def load_folder_tokenizer(folder, llm_config=None):
    """The tokenizer of ``folder``, built as the class its ``tokenizer_config.json`` declares.

    Without a declared class the language model's config (``llm_config``) picks its default class.
    With one, ``AutoTokenizer`` gets a neutral config: handed the LLM's config it builds that LLM's
    default class for some model types (Qwen2 among them) whatever the folder declares, and a Qwen2
    tokenizer NFC-normalises text that, e.g., a GPT-2 tokenizer keeps as it is, so the ids differ.
    Never runs code from the folder (``trust_remote_code=False``).
    """
    from transformers import AutoTokenizer, PretrainedConfig

    folder = Path(folder)
    config_path = folder / TOKENIZER_CONFIG
    declared = None
    if config_path.exists():
        declared = read_json(config_path, "tokenizer config").get("tokenizer_class")
        if declared is not None and not isinstance(declared, str):
            raise ModelLoadError(config_path, f"tokenizer_class is {declared!r}, not a class name", REDOWNLOAD)
    config = PretrainedConfig() if declared else llm_config
    try:
        return AutoTokenizer.from_pretrained(str(folder), config=config, trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        detail = f"{type(err).__name__}: {err}".splitlines()[0]
        raise ModelLoadError(
            folder, f"the tokenizer files cannot be read ({detail})",
            "a model folder needs its tokenizer files (tokenizer.json or vocab files, tokenizer_config.json); " + REDOWNLOAD,
        ) from err
