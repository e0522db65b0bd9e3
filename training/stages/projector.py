"""Stage 2: align image features with the frozen LLM.

Trainable: the mixer projector and the ``<im_patch>`` embedding row (see `training.image_token`).
Frozen: DCFormer (from the SigLIP stage, kept in eval mode so its BatchNorm statistics stay those of
stage 1) and the whole LLM.
"""

from __future__ import annotations

from ..builders import build_vlm
from ..data.instructions import VLMCollator
from ..image_token import attach_image_token_rows
from ..loop import train
from .common import (
    attach_lesion_share,
    count_parameters,
    instruction_dataset,
    keep_in_eval_mode,
    load_vision_tower,
    loop_config,
    save_result,
    stage_dir,
    trainable_parameters,
    unwrap_vlm,
    vlm_loss,
)


def load_vision_from_siglip(model, config: dict) -> bool:
    if not load_vision_tower(model.vision_tower, config, "siglip"):
        print("[projector] no SigLIP result: the image encoder starts from random weights")
        return False
    return True


def run(config: dict) -> dict:
    model, tokenizer = build_vlm(config)
    from_siglip = load_vision_from_siglip(model, config)
    model.requires_grad_(False)
    keep_in_eval_mode(model.vision_tower)
    keep_in_eval_mode(model.language_model)
    model.mm_projector.requires_grad_(True)
    rows = attach_image_token_rows(model.language_model, [model.config.image_token_id])
    rows.rows.requires_grad_(True)

    trainable = trainable_parameters(model)
    dataset, wrapped = instruction_dataset(config, "projector", model)
    attach_lesion_share(config, "projector", model, wrapped)
    collate = VLMCollator(tokenizer, max_length=int(config["model"].get("max_length", 512)))
    cfg = loop_config(config, "projector")
    wrapped, state, accelerator = train(
        name="projector",
        model=wrapped,
        dataset=dataset,
        collate_fn=collate,
        compute_loss=vlm_loss,
        cfg=cfg,
        output_dir=stage_dir(config, "projector"),
    )
    model = unwrap_vlm(wrapped)
    tensors = {f"mm_projector.{k}": v for k, v in model.mm_projector.state_dict().items()}
    tensors.update({f"vision_tower.{k}": v for k, v in model.vision_tower.state_dict().items()})
    tensors["image_token_rows"] = rows.rows
    info = {
        "steps": state.global_step,
        "minutes": round(state.elapsed_s / 60, 2),
        "samples": len(dataset),
        "trainable_parameters": count_parameters(trainable.values()),
        "vision_from_siglip": from_siglip,
    }
    if accelerator.is_main_process:
        save_result(config, "projector", tensors, info)
    return info
