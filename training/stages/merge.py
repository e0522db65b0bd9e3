"""Merge: fold the LoRA adapters and the trained ``<im_patch>`` row into a model folder the plugin loads.

Always writes ``merge.output``, a full folder in the published layout (`model.loading.save_pretrained`;
for the paper preset this is the Med3DVLM-Qwen-2.5-7B equivalent). With ``merge.embedded_output``
(the demo preset) it also writes the "own weights only" folder that ships inside the plugin: vision
tower, projector, new token row, the un-merged LoRA adapter and the SigLIP encoder, but none of the
base LLM's weights (`model.embedded.save_embedded`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftModel

from napari_med3dvlm.model.loading import save_pretrained

from ..builders import build_vlm, is_local_base
from ..image_token import attach_image_token_rows, detach_image_token_rows
from ..model_card import TRAINING_FILE, render_model_card, training_record
from .common import load_result, result_dir, subset


def restore_finetuned(config: dict):
    """(model with the PEFT-wrapped LLM, tokenizer) exactly as the finetune stage left it."""
    model, tokenizer = build_vlm(config)
    state = load_result(config, "finetune")
    rows = attach_image_token_rows(model.language_model, [model.config.image_token_id])
    model.vision_tower.load_state_dict(subset(state, "vision_tower."), strict=True)
    model.mm_projector.load_state_dict(subset(state, "mm_projector."), strict=True)
    with torch.no_grad():
        if "embed_tokens" in state:
            rows.base.weight.copy_(state["embed_tokens"])
        if "lm_head" in state:
            model.language_model.get_output_embeddings().weight.copy_(state["lm_head"])
        rows.rows.copy_(state["image_token_rows"])
    detach_image_token_rows(model.language_model)
    adapter = result_dir(config, "finetune") / "adapter"
    model.language_model = PeftModel.from_pretrained(model.language_model, str(adapter))
    return model, tokenizer


def run(config: dict) -> dict:
    model, tokenizer = restore_finetuned(config)
    model.eval()
    info: dict = {}
    embedded = config.get("merge", {}).get("embedded_output")
    if embedded:
        from napari_med3dvlm.model.embedded import save_embedded

        base = config["model"]["language_model"]
        if not is_local_base(base):
            raise ValueError("merge.embedded_output needs a PyPI-shipped (or local) base language model")
        from .siglip import trained_siglip

        found = trained_siglip(config)
        siglip = found[0] if found else None
        record = training_record(config)  # read before the folder is written: init_from may be this folder
        save_embedded(model, tokenizer, embedded, base_language_model=base, siglip=siglip)
        (Path(embedded) / TRAINING_FILE).write_text(json.dumps(record, indent=2) + "\n")
        # the card of these weights, its results left to eval: the earlier build's numbers must not stay
        (Path(embedded) / "model_card.md").write_text(render_model_card(config, {}))
        if config["merge"].get("adapter_dtype"):
            _cast_adapter(Path(embedded) / "adapter", config["merge"]["adapter_dtype"])
        info["embedded_output"] = str(embedded)
        info["embedded_mb"] = round(_folder_mb(Path(embedded)), 2)
    model.language_model = model.language_model.merge_and_unload()
    output = config.get("merge", {}).get("output") or str(Path(config["output_dir"]) / "merged")
    save_pretrained(model, tokenizer, output)
    info["output"] = str(output)
    if config.get("scope", {}).get("enabled", True):
        info["scope"] = _write_scope(config, model, siglip if embedded else None, [embedded, output])
    return info


def _write_scope(config: dict, model, siglip, folders) -> dict:
    """Scope statistics for the new weights (training/scope.py), so the plugin can say when a scan is
    outside what this model knows. Too small a training split (a smoke test) skips them."""
    from ..scope import write_scope

    try:
        return write_scope(config, model, siglip, [f for f in folders if f])
    except ValueError as err:
        print(f"[merge] scope statistics skipped: {err}")
        return {"skipped": str(err)}


def _cast_adapter(folder: Path, dtype: str) -> None:
    """Store the LoRA weights in a smaller float type (they are upcast when merged at load time)."""
    from safetensors.torch import load_file, save_file

    path = folder / "adapter_model.safetensors"
    target = getattr(torch, dtype)
    tensors = {k: (v.to(target) if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def _folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
