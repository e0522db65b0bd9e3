"""Stage 3: LoRA fine-tuning of the LLM on reports and all VQA formats.

LoRA (peft) on every linear layer of the LLM (``target_modules="all-linear"`` leaves the output head
out), plus the projector; the image encoder optionally (``train_vision``); embeddings either the
``<im_patch>`` row only (``train_embeddings: image_token``) or, as the reference, the full input and
output embedding matrices (``full``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from ..builders import build_vlm
from ..checks import ADAPTER_FILE, EMBEDDED_WEIGHTS, finetune_start
from ..config import stage_config
from ..data.instructions import VLMCollator
from ..image_token import attach_image_token_rows
from ..loop import train
from ..model_card import recorded_stages
from .common import (
    attach_lesion_share,
    RESULT_FILE,
    count_parameters,
    instruction_dataset,
    keep_in_eval_mode,
    load_result,
    loop_config,
    result_dir,
    save_result,
    stage_dir,
    subset,
    trainable_parameters,
    unwrap_vlm,
    vlm_loss,
)


def restore_projector_stage(model, config: dict) -> bool:
    """Load the projector stage's vision tower, projector and image-token row (if it ran)."""
    state = load_result(config, "projector", required=False)
    if not state:
        print("[finetune] no projector-stage result: projector starts from random weights")
        return False
    model.vision_tower.load_state_dict(subset(state, "vision_tower."), strict=True)
    model.mm_projector.load_state_dict(subset(state, "mm_projector."), strict=True)
    rows = model.language_model.get_input_embeddings()
    rows.rows.data.copy_(state["image_token_rows"])
    return True


def lora_config(stage_cfg: dict) -> LoraConfig:
    return LoraConfig(
        r=int(stage_cfg.get("lora_r", 16)),
        lora_alpha=int(stage_cfg.get("lora_alpha", 32)),
        lora_dropout=float(stage_cfg.get("lora_dropout", 0.05)),
        bias="none",
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def prepare_finetune_model(config: dict, model=None, tokenizer=None):
    """The VLM with stage-2 weights, LoRA adapters and the stage's trainable parts switched on."""
    stage_cfg = stage_config(config, "finetune")
    if model is None:
        model, tokenizer = build_vlm(config)
    rows = attach_image_token_rows(model.language_model, [model.config.image_token_id])
    # A run that continues from init_from takes every weight from there; else from the projector stage.
    restored = False if stage_cfg.get("init_from") else restore_projector_stage(model, config)
    model.requires_grad_(False)
    model.language_model = get_peft_model(model.language_model, lora_config(stage_cfg))
    model.mm_projector.requires_grad_(True)
    embeddings = stage_cfg.get("train_embeddings", "image_token")
    if embeddings == "full":
        rows.base.weight.requires_grad_(True)
        rows.rows.requires_grad_(True)
        out = model.language_model.get_output_embeddings()
        if out is not None:
            out.weight.requires_grad_(True)
    elif embeddings == "image_token":
        rows.rows.requires_grad_(True)
    if stage_cfg.get("init_from"):
        continue_from(model, Path(stage_cfg["init_from"]))
    if stage_cfg.get("train_vision", False):
        model.vision_tower.requires_grad_(True)
    else:
        keep_in_eval_mode(model.vision_tower)
    return model, tokenizer, restored


def continue_from(model, folder: Path) -> None:
    """Start from an earlier fine-tuning round, with a fresh schedule: its result's ``final/`` folder
    (same machine), or an embedded model folder as the plugin ships it, e.g. the committed demo model,
    so that rounds add up across sessions and machines. Image encoder, projector, ``<im_patch>`` row
    and LoRA adapter are taken from it (the embedded adapter may be stored in bf16: upcast on load)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    kind = finetune_start(folder)
    if kind == "result":
        state = load_file(str(folder / RESULT_FILE))
        token_rows = state["image_token_rows"]
    elif kind == "embedded":
        state = load_file(str(folder / EMBEDDED_WEIGHTS))
        token_rows = state["new_token_embeddings"]
        if any(k.startswith("language_model.") or k == "new_lm_head_rows" for k in state):
            raise ValueError(f"finetune.init_from {folder}: an embedded folder with language-model weights "
                             "besides the adapter (train_embeddings: full) cannot be continued")
    else:
        raise ValueError(f"finetune.init_from {folder}: neither a fine-tuning result nor an embedded model folder")
    model.vision_tower.load_state_dict(subset(state, "vision_tower."), strict=True)
    model.mm_projector.load_state_dict(subset(state, "mm_projector."), strict=True)
    rows = model.language_model.get_input_embeddings()
    if tuple(token_rows.shape) != tuple(rows.rows.shape):
        raise ValueError(f"finetune.init_from {folder}: {tuple(token_rows.shape)} new token rows, "
                         f"this model has {tuple(rows.rows.shape)}")
    with torch.no_grad():
        rows.rows.copy_(token_rows)
        if "embed_tokens" in state:
            rows.base.weight.copy_(state["embed_tokens"])
        if "lm_head" in state:
            model.language_model.get_output_embeddings().weight.copy_(state["lm_head"])
    adapter = load_file(str(folder / ADAPTER_FILE))
    stored = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    lora = model.language_model.peft_config["default"]
    if (stored.get("r"), stored.get("lora_alpha")) != (lora.r, lora.lora_alpha):
        raise ValueError(f"finetune.init_from {folder}: its adapter has r {stored.get('r')}, alpha "
                         f"{stored.get('lora_alpha')}; this stage's has r {lora.r}, alpha {lora.lora_alpha}")
    result = set_peft_model_state_dict(model.language_model, adapter)
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"adapter in {folder} does not match: {result.unexpected_keys[:5]}")


def earlier_rounds(folder: Path) -> dict | None:
    """The info of the fine-tuning round ``init_from`` holds (its own earlier rounds inside)."""
    folder = Path(folder)
    if (folder / "info.json").exists():
        return json.loads((folder / "info.json").read_text())
    return recorded_stages(folder).get("finetune")


def findings_test_entries(config: dict) -> tuple[Path, list[dict]] | None:
    """(data root, test reports) of the stage's learning curve (``finetune.evaluate_every``: lesion reading,
    `training.evaluation.finding_tokens`), None when it is off. Phantom cases only: their truth is
    in a case.json beside each report, which M3D data does not have."""
    from ..checks import InputError
    from ..data import sources
    from ..evaluation.finding_tokens import has_truth

    stage = stage_config(config, "finetune")
    if not int(stage.get("evaluate_every", 0)):
        return None
    test = sources.caption_dataset(config, "test")
    entries = test.entries[: int(stage.get("evaluate_cases", 40))]
    if not has_truth(test.root, entries):
        raise InputError(f"finetune: evaluate_every needs phantom test cases (a case.json beside each report) "
                         f"in {test.root}; set finetune.evaluate_every=0 for other data "
                         f"(preset {config.get('name', '?')})")
    return Path(test.root), entries


def run(config: dict) -> dict:
    curve = findings_test_entries(config)  # before the model is built: a wrong setting is one line
    model, tokenizer, restored = prepare_finetune_model(config)
    trainable = trainable_parameters(model)
    dataset, wrapped = instruction_dataset(config, "finetune", model)
    attach_lesion_share(config, "finetune", model, wrapped)
    collate = VLMCollator(tokenizer, max_length=int(config["model"].get("max_length", 512)))
    evaluate = None
    if curve is not None:
        from ..evaluation.finding_tokens import finding_curve

        evaluate = finding_curve(tokenizer, *curve)
    wrapped, state, accelerator = train(
        name="finetune",
        model=wrapped,
        dataset=dataset,
        collate_fn=collate,
        compute_loss=vlm_loss,
        cfg=loop_config(config, "finetune"),
        output_dir=stage_dir(config, "finetune"),
        evaluate=evaluate,
        evaluate_every=int(stage_config(config, "finetune").get("evaluate_every", 0)) if evaluate else 0,
    )
    model = unwrap_vlm(wrapped)
    info = {
        "steps": state.global_step,
        "minutes": round(state.elapsed_s / 60, 2),
        "samples": len(dataset),
        "trainable_parameters": count_parameters(trainable.values()),
        "restored_projector_stage": restored,
    }
    init_from = stage_config(config, "finetune").get("init_from")
    earlier = earlier_rounds(Path(init_from)) if init_from else None
    if earlier:
        info["continued_from"] = earlier
    if evaluate is not None and accelerator.is_main_process:
        info["findings_test"] = evaluate(model)
    if accelerator.is_main_process:
        save_finetune_result(config, model, info)
    return info


def save_finetune_result(config: dict, model, info: dict) -> None:
    """Adapter folder (peft) + everything else that changed, as one safetensors file."""
    tensors = {f"vision_tower.{k}": v for k, v in model.vision_tower.state_dict().items()}
    tensors.update({f"mm_projector.{k}": v for k, v in model.mm_projector.state_dict().items()})
    rows = model.language_model.get_input_embeddings()
    tensors["image_token_rows"] = rows.rows
    if stage_config(config, "finetune").get("train_embeddings") == "full":
        tensors["embed_tokens"] = rows.base.weight
        out = model.language_model.get_output_embeddings()
        if out is not None and out.weight is not rows.base.weight:
            tensors["lm_head"] = out.weight
    folder = save_result(config, "finetune", tensors, info)
    model.language_model.save_pretrained(str(folder / "adapter"))
    assert folder == result_dir(config, "finetune")
