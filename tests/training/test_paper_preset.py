"""The paper preset: the published architecture, and its stage wiring on tiny stand-in models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from napari_med3dvlm.model import load_vlm
from napari_med3dvlm.model.loading import published_state_dict
from tiny_setup import IMAGE_SIZE, tiny_preset
from training.builders import build_vlm
from training.config import apply_overrides, load_preset
from training.run import run_stage
from training.stages.merge import restore_finetuned

MANIFEST = Path(__file__).resolve().parents[1] / "fixtures" / "manifests" / "manifest_vlm_qwen2.5_7b_meta.json"


def test_paper_preset_builds_the_published_architecture_on_meta():
    manifest = json.loads(MANIFEST.read_text())
    model, _ = build_vlm(load_preset("paper"), device="meta", with_tokenizer=False)
    state = published_state_dict(model)
    assert len(state) == manifest["num_entries"] == 813
    shapes = {name: list(tensor.shape) for name, tensor in state.items()}
    expected = {name: list(entry["shape"] if isinstance(entry, dict) else entry) for name, entry in manifest["state_dict"].items()}
    assert shapes == expected
    assert model.config.proj_out_num == 256 and model.mm_projector.num_output_tokens == 256

    from peft import get_peft_model

    from training.stages.finetune import lora_config

    lora = get_peft_model(model.language_model, lora_config(load_preset("paper")["finetune"]))
    lora_params = sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n)
    assert lora_params == manifest["lora_r16_trainable_params_on_q_k_v_o_gate_up_down_x28"]


def _paper_on_tiny_models(tmp_path: Path, data: Path) -> dict:
    """The paper preset's recipe (full text encoder, geometric augmentation, trainable vision tower
    and embeddings in stage 3) with every model and size swapped for a tiny stand-in."""
    tiny = tiny_preset(tmp_path, data)
    steps = {"epochs": 100, "max_steps": 3, "batch_size": 2, "save_every": 2}
    overrides = [
        f"output_dir={tmp_path / 'runs'}",
        f"data.root={data}",
        "data.cap_json=M3D_Cap.json",
        "data.vqa_train=M3D_VQA_train.csv",
        "data.vqa_yn_train=M3D_VQA_yn_train.csv",
        "data.vqa_test=M3D_VQA_test.csv",
        "data.vqa_yn_test=M3D_VQA_yn_test.csv",
        f"data.image_size={list(IMAGE_SIZE)}",
        "train.mixed_precision=no",
        "train.num_workers=0",
        f"merge.output={tmp_path / 'merged'}",
    ]
    config = apply_overrides(load_preset("paper"), overrides)
    for stage in ("siglip", "projector", "finetune"):
        config[stage].update(steps)
    for key in ("vision_variant", "text_encoder_config", "text_tokenizer", "language_model_config", "tokenizer", "low_input_size",
                "high_input_size", "low_output_size", "high_output_size", "proj_out_num", "siglip_hidden_size",
                "text_max_length", "max_length"):
        config["model"][key] = tiny["model"][key]
    return config


@pytest.mark.slow
def test_paper_stage_wiring_runs_on_tiny_stand_ins(tmp_path, tiny_data):
    config = _paper_on_tiny_models(tmp_path, tiny_data)
    assert config["finetune"]["train_embeddings"] == "full" and config["finetune"]["train_vision"]

    siglip = run_stage(config, "siglip")
    projector = run_stage(config, "projector")
    finetune = run_stage(config, "finetune")
    run_stage(config, "merge")
    assert siglip["steps"] == projector["steps"] == finetune["steps"] == 3
    assert projector["vision_from_siglip"] and finetune["restored_projector_stage"]
    # A finished stage is skipped when `all` runs again.
    assert run_stage(config, "siglip") == json.loads((tmp_path / "runs" / "siglip" / "DONE").read_text())

    merged, tokenizer = load_vlm(str(tmp_path / "merged"))
    reference, _ = restore_finetuned(config)
    reference.eval()
    prompt = "<im_patch>" * config["model"]["proj_out_num"] + " which organ has a lesion?"
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    image = torch.rand(1, 1, *IMAGE_SIZE)
    with torch.no_grad():
        expected = reference(input_ids=ids, images=image).logits
        actual = merged(input_ids=ids, images=image).logits
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
