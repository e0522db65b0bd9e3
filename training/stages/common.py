"""What the stages share: their folders, datasets, freezing helpers and result files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import stage_config
from ..data import sources
from ..data.augment import AugmentConfig, AugmentedDataset
from ..data.instructions import InstructionDataset, MixedDataset
from ..loop import LoopConfig
from .lm_loss import LabelledLossVLM

RESULT_FILE = "trainable.safetensors"


def stage_dir(config: dict, stage: str) -> Path:
    return Path(config["output_dir"]) / stage


def result_dir(config: dict, stage: str) -> Path:
    return stage_dir(config, stage) / "final"


def loop_config(config: dict, stage: str) -> LoopConfig:
    return LoopConfig.from_dict(stage_config(config, stage))


def keep_in_eval_mode(module: nn.Module) -> nn.Module:
    """Freeze ``module`` and pin it to eval mode, so ``model.train()`` leaves its BatchNorm stats alone."""
    module.requires_grad_(False)
    module.eval()
    module.train = lambda mode=True: module  # type: ignore[method-assign]
    return module


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def count_parameters(params) -> int:
    return int(sum(p.numel() for p in params))


def instruction_dataset(config: dict, stage: str, model, split: str = "train"):
    """Caption / closed / open / yes-no samples mixed as listed in the stage's ``tasks``.

    With ``cache_vision_features`` (frozen encoder only) the items carry cached encoder tokens
    instead of volumes. The returned model is the VLM wrapped to give its loss (`LabelledLossVLM`).
    """
    stage_cfg = stage_config(config, stage)
    seed = int(stage_cfg.get("seed", 0))
    augment = AugmentConfig.from_dict(config["data"].get("augment")) if split == "train" else None
    tasks = stage_cfg.get("tasks", ["caption"])
    bases = [sources.caption_dataset(config, split) if t == "caption" else sources.vqa_dataset(config, split, t) for t in tasks]
    cache = None
    if stage_cfg.get("cache_vision_features") and not any(p.requires_grad for p in model.vision_tower.parameters()):
        from ..data.features import CachedImageDataset, build_cache

        cache = build_cache(model, bases, Path(config["output_dir"]) / "vision_cache")
        bases = [CachedImageDataset(base, cache) for base in bases]
    elif augment is not None:
        bases = [AugmentedDataset(base, augment, seed=seed) for base in bases]
    repeats = stage_cfg.get("task_repeats") or {}
    parts = []
    for base, task in zip(bases, tasks):
        # Repeating a small task (one report per case, a dozen questions) balances the mix.
        parts.extend([InstructionDataset(base, task, model_proj_out_num(model), seed=seed)] * int(repeats.get(task, 1)))
    return MixedDataset(parts), LabelledLossVLM(model)


def model_proj_out_num(model) -> int:
    return getattr(model, "vlm", model).config.proj_out_num


def unwrap_vlm(model):
    """The Med3DVLMForCausalLM inside a `LabelledLossVLM` (or the model itself)."""
    return getattr(model, "vlm", model)


def vlm_loss(model, batch):
    """``model`` is a `LabelledLossVLM`: volumes or cached encoder tokens, whichever the batch holds."""
    inputs = ("input_ids", "attention_mask", "labels", "images", "vision_low", "vision_high")
    loss = model(**{key: batch[key] for key in inputs if key in batch})
    inner = getattr(model, "module", model)  # DDP wraps the module
    auxiliary = getattr(inner, "last_lesion_share", None)
    if auxiliary is None:
        return loss, {}
    return loss, {"lesion_share": float(auxiliary),
                  "lm_loss": float(loss.detach()) - inner.lesion_share_weight * float(auxiliary)}


def attach_lesion_share(config: dict, stage: str, model, wrapped) -> None:
    """The auxiliary lesion-share loss (`training.stages.lesion_share`) when ``{stage}.lesion_share_weight`` is set."""
    weight = float(stage_config(config, stage).get("lesion_share_weight", 0) or 0)
    if weight:
        from .lesion_share import lesion_share_for

        wrapped.attach_lesion_share(lesion_share_for(config, model, stage), weight)


def save_result(config: dict, stage: str, tensors: dict[str, torch.Tensor], info: dict) -> Path:
    """Write the stage's result; each file is written to a temporary name and renamed (kill-safe)."""
    from ..loop import write_atomic

    folder = result_dir(config, stage)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{RESULT_FILE}.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, folder / RESULT_FILE)
    write_atomic(folder / "info.json", json.dumps(info, indent=2))
    return folder


def load_result(config: dict, stage: str, required: bool = True) -> dict[str, torch.Tensor]:
    path = result_dir(config, stage) / RESULT_FILE
    if not path.exists():
        if required:
            raise FileNotFoundError(f"{path} not found: run the {stage!r} stage first")
        return {}
    return load_file(str(path))


def subset(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_vision_tower(encoder: nn.Module, config: dict, stage: str) -> bool:
    """Load the ``vision_tower.*`` weights of an earlier stage's result into ``encoder``; False when
    that stage has no result."""
    vision = subset(load_result(config, stage, required=False), "vision_tower.")
    if not vision:
        return False
    encoder.load_state_dict(vision, strict=True)
    return True
