"""Presets: one YAML file per recipe, overridable from the command line.

A preset is a plain nested dict. ``key.sub=value`` overrides are parsed with YAML so that numbers,
booleans and lists keep their types (``finetune.max_steps=10``, ``data.size=[32,64,64]``).
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A user error (preset, override, missing input): `training.run` prints its one-line message and
    exits 2, never a traceback."""
#: In order. ``vision`` (dense pretraining of the encoder) and ``lit`` (the SigLIP text side tuned
#: against the locked image tower) run only for presets that have a section of their name (the demo
#: presets); the paper preset is the reference recipe without them.
STAGES = ("vision", "siglip", "lit", "projector", "finetune", "merge", "eval")
OPTIONAL_STAGES = ("vision", "lit")


def stages_of(config: dict) -> list[str]:
    """The stages ``all`` runs for this preset. A fine-tuning round (``finetune.init_from``) takes the
    image encoder, projector and SigLIP from the folder it continues from: only its own stages run
    (and ``lit``, when the preset has it, on that folder's SigLIP)."""
    present = [s for s in STAGES if s not in OPTIONAL_STAGES or s in config]
    if (config.get("finetune") or {}).get("init_from"):
        return [s for s in present if s in ("lit", "finetune", "merge", "eval")]
    return present


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name_or_path: str | Path) -> dict:
    """A preset by name (``demo``) or by path to a YAML file.

    ``base: NAME`` starts from another preset and merges this file's sections into it key by key, so
    a variant states only what it changes.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise ConfigError(f"no preset {str(name_or_path)!r}: use one of {', '.join(available_presets())} or a YAML path")
    try:
        with open(path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"preset {str(name_or_path)!r} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"preset {str(name_or_path)!r} is not a mapping of sections")
    name = config.get("name", path.stem)
    base = config.pop("base", None)
    if base:
        config = _merge(load_preset(base), config)
    config["name"] = name
    _require(config, str(name_or_path))
    _resolve_published_size(config)
    return config


#: ``data.image_size: published``: the volumes are prepared at the published model's input size,
#: which the plugin defines once (reading it imports the plugin's preprocessing, torch included).
PUBLISHED = "published"


def _resolve_published_size(config: dict) -> None:
    if config["data"]["image_size"] == PUBLISHED:
        from napari_med3dvlm.io import PUBLISHED_INPUT_SIZE

        config["data"]["image_size"] = list(PUBLISHED_INPUT_SIZE)


#: What every stage reads without a default: a preset without them cannot run at all.
REQUIRED = ("output_dir", "data.root", "data.cap_json", "data.image_size", "model.vision_variant",
            "model.language_model", "model.text_encoder")


def _require(config: dict, preset: str) -> None:
    for key in REQUIRED:
        node: Any = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            raise ConfigError(f"preset {preset!r} lacks {key} (see training/presets/demo.yaml for a complete one)")


def _merge(base: dict, changes: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def set_dotted(config: dict, key: str, value: Any) -> None:
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise KeyError(f"cannot override {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


#: Keys a stage reads that a preset need not spell out, with their types: the ``train`` defaults and
#: the stage's own options. A key in the preset is known too, with the type of its value. Keep in step
#: with `training.loop.LoopConfig` and the stages' ``.get`` calls (tests/training/test_run_cli.py checks
#: the LoopConfig part).
LOOP_KEYS = {
    "epochs": "number", "max_steps": "int", "batch_size": "int", "gradient_accumulation_steps": "int",
    "lr": "number", "weight_decay": "number", "warmup_ratio": "number", "max_grad_norm": "number",
    "mixed_precision": "precision", "seed": "int", "save_every": "int", "keep_checkpoints": "int",
    "log_every": "int", "max_minutes": "number", "calibrate_steps": "int", "num_workers": "int",
    "stop_after_steps": "int", "from_scratch": "bool", "batch_by_task": "bool",
}
STAGE_KEYS = {
    # The vision stage checks its own section strictly too (training/vision/config.py).
    "vision": {"cache_dir": "str", "train_cases": "int", "test_cases": "int", "phantom_seed": "int",
               "render_workers": "int", "train_sampler": "str", "layer_scale_init": "number",
               "dense_loss": "str", "evaluate_every": "int", "resume_file": "str",
               "pos_weight": "number", "balanced_dense": "bool", "token_kind_weight": "number",
               "case_max_weight": "number", "host_balanced_dense": "bool", "stem": "str",
               "technique_weight": "number", "init_from": "str"},
    "siglip": {"data_root": "str", "data_phantoms": "dict", "vision_lr": "number", "cache_text_features": "any"},
    "lit": {"lora_r": "int", "lora_alpha": "int", "evaluate_every": "int"},
    "projector": {"tasks": "list", "task_repeats": "dict", "cache_vision_features": "bool",
                  "lesion_share_weight": "number", "lesion_share_batch": "int"},
    "finetune": {"tasks": "list", "task_repeats": "dict", "cache_vision_features": "bool", "lora_r": "int",
                 "lora_alpha": "int", "lora_dropout": "number", "train_vision": "bool",
                 "train_embeddings": "str", "init_from": "str", "evaluate_every": "int", "evaluate_cases": "int",
                 "lesion_share_weight": "number", "lesion_share_batch": "int"},
}
SECTION_KEYS = {
    "train": {**LOOP_KEYS, "num_threads": "int"},
    **{stage: {**LOOP_KEYS, **keys} for stage, keys in STAGE_KEYS.items()},
    "vision": {**{k: v for k, v in LOOP_KEYS.items() if k not in ("from_scratch", "batch_by_task")},
               **STAGE_KEYS["vision"]},
    "merge": {"output": "str", "embedded_output": "str", "adapter_dtype": "str"},
    "eval": {"retrieval_sizes": "list", "caption_samples": "int", "vqa_samples": "int", "yn_samples": "int",
             "max_new_tokens": "int", "blank_baseline": "bool", "tasks": "list", "update": "bool",
             "closed_scored": "bool", "pointing_samples": "int", "max_minutes": "number", "seed": "int"},
    "data": {"root": "str", "cap_json": "str", "vqa_train": "str", "vqa_yn_train": "str", "vqa_test": "str",
             "vqa_yn_test": "str", "image_size": "list", "augment": "dict", "window": "any", "phantoms": "dict"},
    "model": {"vision_variant": "str", "vision_stem": "str", "text_encoder": "str", "text_trainable": "str", "text_pooling": "str",
              "text_max_length": "int", "siglip_hidden_size": "int", "t_prime": "number", "bias": "number",
              "language_model": "str", "language_model_architecture": "dict", "language_model_config": "dict",
              "text_encoder_config": "dict", "text_tokenizer": "str", "tokenizer": "str", "init_seed": "int",
              "low_input_size": "list", "high_input_size": "list", "low_output_size": "list",
              "high_output_size": "list", "proj_out_num": "int", "max_length": "int"},
    "scope": {"enabled": "bool", "cases": "int", "modalities": "list", "training_data": "str", "advice": "str",
              "components": "int", "quantile": "number"},
    "model_card": {"hardware": "str"},
}
TOP_KEYS = {"name": "str", "output_dir": "str", **{section: "dict" for section in SECTION_KEYS}}
_KIND_WORDS = {"int": "an integer", "number": "a number", "bool": "true or false", "str": "a string",
               "list": "a list ([a, b])", "dict": "a mapping ({key: value})",
               "precision": "auto, no, fp16, bf16 or fp8"}


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "number"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "dict"
    return "str"


def _fits(value: Any, kind: str) -> bool:
    if value is None or kind == "any":
        return True  # null: the stage's default
    if kind == "precision":
        return value is False or value in ("auto", "no", "fp16", "bf16", "fp8")
    actual = _kind_of(value)
    return actual == kind or (kind == "number" and actual == "int")


def _expected_kind(config: dict, parts: list[str]) -> str | None:
    """The type of a dotted key (None: anything goes); KeyError when the preset and the stages know
    no such key. Below a section's options (``data.augment.*``, ``model.language_model_config.*``) a
    mapping is free-form: a key there keeps the type of its preset value."""
    section, present = parts[0], config.get(parts[0])
    if section not in config and section not in TOP_KEYS:
        raise KeyError(1)
    if len(parts) == 1:
        return TOP_KEYS.get(section) or (None if present is None else _kind_of(present))
    if not isinstance(present, dict):
        return None  # set_dotted says that this is not a section
    table, name = SECTION_KEYS.get(section, {}), parts[1]
    if name not in present and name not in table:
        raise KeyError(2)
    if len(parts) == 2:
        if name in table:
            return table[name]
        return None if present[name] is None else _kind_of(present[name])
    node: Any = present.get(name)
    for part in parts[2:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and node.get(parts[-1]) is not None:
        return _kind_of(node[parts[-1]])
    return None


def _known_keys(config: dict, parts: list[str]) -> list[str]:
    """The dotted keys a stage knows at the depth of ``parts``' last element (for a did-you-mean)."""
    if len(parts) == 1:
        return sorted(set(config) | set(TOP_KEYS))
    section = config.get(parts[0])
    names = set(section) if isinstance(section, dict) else set()
    return sorted(f"{parts[0]}.{name}" for name in names | set(SECTION_KEYS.get(parts[0], {})))


def check_override(config: dict, key: str, value: Any, item: str) -> None:
    """Raise `ConfigError` naming the key and the preset when ``key`` is unknown or ``value`` has the
    wrong type: a typo must not train for an hour with the default."""
    preset = config.get("name", "?")
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r}: {key!r} is not a dotted key such as finetune.max_steps")
    try:
        kind = _expected_kind(config, parts)
    except KeyError as err:
        unknown = ".".join(parts[: err.args[0]])
        close = difflib.get_close_matches(unknown, _known_keys(config, parts[: err.args[0]]), n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}?" if close else ""
        what = "section" if err.args[0] == 1 and len(parts) > 1 else "key"
        raise ConfigError(f"override {item!r}: unknown {what} {unknown} in preset {preset}{hint}") from None
    if kind and not _fits(value, kind):
        raise ConfigError(f"override {item!r}: {key} in preset {preset} takes {_KIND_WORDS[kind]}, "
                          f"got {value!r} ({_KIND_WORDS[_kind_of(value)]})")


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """Return a copy of ``config`` with ``key=value`` strings applied.

    Each key must be one the preset or a stage knows, and its value of the right type
    (`check_override`); a bad one raises `ConfigError`.
    """
    config = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. finetune.max_steps=10)")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: the value is not valid YAML (quote it, or close its brackets)") from None
        check_override(config, key, value, item)
        try:
            set_dotted(config, key, value)
        except KeyError as err:
            raise ConfigError(f"override {item!r}: {err.args[0]} (preset {config.get('name', '?')})") from None
    return config


def vision_cache_root(cache_dir: str | None, output_dir) -> Path:
    """Where the vision stage renders its own cases and dense targets (``vision.cache_dir``, else
    ``<output_dir>/vision_dense``); torch-free, so the plan can look there too."""
    return Path(cache_dir) if cache_dir else Path(output_dir) / "vision_dense"


def stage_config(config: dict, stage: str) -> dict:
    """The ``train`` defaults merged with one stage's section."""
    merged = copy.deepcopy(config.get("train", {}))
    merged.update(copy.deepcopy(config.get(stage, {})))
    return merged
