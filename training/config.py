"""Presets: one YAML file per recipe, overridable from the command line.

A preset is a plain nested dict. ``key.sub=value`` overrides are parsed with YAML so that numbers,
booleans and lists keep their types (``finetune.max_steps=10``, ``data.size=[32,64,64]``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).parent / "presets"
#: In order. ``vision`` (dense pretraining of the encoder) runs only for presets that have a
#: ``vision`` section (the demo presets); the paper preset is the reference recipe without it.
STAGES = ("vision", "siglip", "projector", "finetune", "merge", "eval")


def stages_of(config: dict) -> list[str]:
    """The stages ``all`` runs for this preset."""
    return [s for s in STAGES if s != "vision" or "vision" in config]


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
        raise FileNotFoundError(f"no preset {name_or_path!r}; available: {available_presets()}")
    with open(path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle) or {}
    name = config.get("name", path.stem)
    base = config.pop("base", None)
    if base:
        config = _merge(load_preset(base), config)
    config["name"] = name
    return config


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


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """Return a copy of ``config`` with ``key=value`` strings applied."""
    config = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        set_dotted(config, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return config


def stage_config(config: dict, stage: str) -> dict:
    """The ``train`` defaults merged with one stage's section."""
    merged = copy.deepcopy(config.get("train", {}))
    merged.update(copy.deepcopy(config.get(stage, {})))
    return merged
