"""One typed configuration for the vision stage, read from a preset's ``vision:`` section.

Every key of the section is either a field of `VisionConfig` or a loop setting (`training.loop.LoopConfig`:
epochs, batch size, learning rate, time budget ...); anything else, or a value of the wrong type, is an
error that names the key and the preset, so a misspelt option cannot silently fall back to a default.
The encoder's stem is not here: it is ``model.vision_stem``, the one setting the SigLIP and VLM stages
read too, so that they load the stem this stage trained.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from ..config import vision_cache_root
from ..loop import LoopConfig
from .losses import DENSE_LOSSES

SAMPLERS = ("natural", "lesion-rich")
#: Keys that moved, and where to.
MOVED = {"stem": "model.vision_stem"}


class VisionConfigError(ValueError):
    """A preset's ``vision:`` section that cannot be used (one line)."""


@dataclass(frozen=True)
class VisionConfig:
    # dense targets (training/data/dense.py)
    train_cases: int = 8000
    test_cases: int = 200
    phantom_seed: int = 0
    render_workers: int = 2
    cache_dir: Optional[str] = None              # default: <output_dir>/vision_dense
    train_sampler: Literal[SAMPLERS] = "natural"
    # model and loss
    layer_scale_init: Optional[float] = 0.1
    dense_loss: Literal[DENSE_LOSSES] = "balanced"
    # > 0: a head on the s3 and s4 tokens also learns each case's region, contrast phase and plane
    # (cross-entropy at this weight); the lesion targets alone leave the phase weak (docs/training.md)
    technique_weight: float = 0.0
    # start the encoder, and every head of the same shape, from another vision run: its resume file
    # (training/checkpoints/*.resume.safetensors) or its result (vision/final/trainable.safetensors);
    # a new schedule and optimizer, as a warm restart
    init_from: Optional[str] = None
    # learning curve and the move between machines
    evaluate_every: int = 100
    # the stage ends early once the test focal case AUC (dense head) is at least this at two
    # evaluations in a row, counted over the whole learning curve (null: run the whole schedule)
    target_focal_auc: Optional[float] = None
    resume_file: Optional[str] = None            # training/checkpoints/*.resume.safetensors
    # from the preset's model section
    variant: str = "nano"
    stem: str = "decomposed"
    image_size: tuple = (32, 128, 128)
    window: str = "soft tissue"
    loop: LoopConfig = field(default_factory=LoopConfig)

    @classmethod
    def from_preset(cls, config: dict) -> "VisionConfig":
        preset = config.get("name", "?")
        section = config.get("vision") or {}
        own = typing.get_type_hints(cls)
        own_keys = set(own) - {"variant", "stem", "image_size", "window", "loop"}
        loop_fields = typing.get_type_hints(LoopConfig)
        values, loop_values = {}, {}
        for key, value in section.items():
            if key in MOVED:
                raise VisionConfigError(f"preset {preset!r}: vision.{key} is now {MOVED[key]}")
            if key in own_keys:
                values[key] = _checked(preset, key, value, own[key])
            elif key in loop_fields:
                if key == "mixed_precision" and value is False:
                    value = "no"  # YAML reads a bare `no` as false
                loop_values[key] = _checked(preset, key, value, loop_fields[key])
            else:
                known = sorted(own_keys | set(loop_fields))
                raise VisionConfigError(f"preset {preset!r}: unknown key vision.{key} (known: {', '.join(known)})")
        train = {k: v for k, v in (config.get("train") or {}).items() if k in loop_fields}
        loop = LoopConfig.from_dict({**train, **loop_values})
        model = config.get("model") or {}
        data = config.get("data") or {}
        stem = _checked(preset, "model.vision_stem", model.get("vision_stem", "decomposed"), str)
        return cls(**values, variant=str(model.get("vision_variant", "nano")), stem=stem,
                   image_size=tuple(int(n) for n in data.get("image_size", (32, 128, 128))),
                   window=str(data.get("window", "soft tissue")), loop=loop)

    def cache_root(self, output_dir) -> Path:
        return vision_cache_root(self.cache_dir, output_dir)

    def recipe(self) -> dict:
        """What a resume file must agree on with the preset that imports it: the data order, the model's
        shape and the schedule's length all follow from these."""
        return {"train_cases": self.train_cases, "phantom_seed": self.phantom_seed,
                "train_sampler": self.train_sampler, "variant": self.variant, "stem": self.stem,
                "image_size": list(self.image_size), "batch_size": self.loop.batch_size,
                "gradient_accumulation_steps": self.loop.gradient_accumulation_steps, "seed": self.loop.seed,
                "dense_loss": self.dense_loss,
                # only when set, so resume files written before these options still match
                **({"technique_weight": self.technique_weight} if self.technique_weight else {}),
                **({"init_from": self.init_from} if self.init_from else {})}


def _checked(preset: str, key: str, value, annotation):
    """``value`` if it fits ``annotation`` (ints are accepted for floats), else a one-line error."""
    if _fits(value, annotation):
        return float(value) if annotation is float else value
    name = key if key.startswith("model.") else f"vision.{key}"
    raise VisionConfigError(f"preset {preset!r}: {name} must be {_describe(annotation)}, got {value!r}")



def _fits(value, annotation) -> bool:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (str, bool):
        return isinstance(value, annotation)
    if annotation is tuple:
        return isinstance(value, (list, tuple))
    return True


def _describe(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(annotation, str(annotation))

