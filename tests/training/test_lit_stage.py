"""The lit stage: the SigLIP text side tuned against the locked image tower, for retrieval."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny_setup import tiny_preset

LIT = {"epochs": 100, "max_steps": 6, "batch_size": 4, "lr": 1.0e-2, "save_every": 2, "evaluate_every": 3,
       "lora_r": 4, "lora_alpha": 8}


@pytest.fixture(scope="module")
def after_siglip(tmp_path_factory, tiny_data):
    """A tiny preset with a lit section whose SigLIP stage has run."""
    from training.run import run_stage

    root = tmp_path_factory.mktemp("lit")
    config = tiny_preset(root, tiny_data, lit=LIT)
    run_stage(config, "siglip")
    return root, config


def _copy(config: dict, root: Path, name: str, **lit) -> dict:
    """The same preset writing into ``root/name``, the SigLIP result copied over."""
    other = copy.deepcopy(config)
    other["output_dir"] = str(root / name / "runs")
    shutil.copytree(Path(config["output_dir"]) / "siglip", Path(other["output_dir"]) / "siglip")
    other["lit"].update(lit)
    return other


def _embeddings(siglip, tokenizer, data: Path):
    from training.data import sources
    from training.stages.lit import embed_volumes

    config = {"data": {"root": str(data), "cap_json": "M3D_Cap.json"}}
    test = sources.caption_dataset(config, "test")
    tokens = tokenizer([test.text(i) for i in range(len(test))], padding="longest", return_tensors="pt")
    with torch.no_grad():
        return embed_volumes(siglip, test), siglip.encode_text(tokens["input_ids"], tokens["attention_mask"])


def test_lit_changes_the_text_side_and_keeps_every_image_embedding(after_siglip, tiny_data):
    """Indexes built with the SigLIP stage's image tower stay valid: only report embeddings move."""
    from training.run import run_stage
    from training.stages.siglip import trained_siglip

    root, config = after_siglip
    config = _copy(config, root, "plain")
    before, tokenizer, source = trained_siglip(config)
    assert source == "the siglip stage"
    info = run_stage(config, "lit")
    assert info["steps"] == 6 and info["samples"] == 8 and info["image_tower"] == "the siglip stage"
    assert {"TR@1", "IR@1", "TR@5"} <= set(info["retrieval_test"])

    after, _, source = trained_siglip(config)
    assert source == "the lit stage"  # what merge ships and eval scores
    images_before, texts_before = _embeddings(before, tokenizer, tiny_data)
    images_after, texts_after = _embeddings(after, tokenizer, tiny_data)
    assert torch.allclose(images_before, images_after, atol=1e-6)
    assert (texts_before - texts_after).abs().max() > 1e-3
    assert after.t_prime.item() != before.t_prime.item()

    # the learning curve: test retrieval every evaluate_every steps, in metrics.jsonl
    records = [json.loads(line) for line in (Path(config["output_dir"]) / "lit" / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], set(r["eval"])) for r in records if "eval" in r]
    assert curve == [(3, {"IR@1", "IR@5", "TR@1", "TR@5"}), (6, {"IR@1", "IR@5", "TR@1", "TR@5"})]
    # the result file holds the text side alone: adapters, projection, temperature and bias
    saved = load_file(Path(config["output_dir"]) / "lit" / "final" / "trainable.safetensors")
    assert any("lora_A" in k for k in saved) and "mm_language_proj.weight" in saved and "t_prime" in saved
    assert not any(k.startswith(("vision_encoder.", "mm_vision_proj.")) for k in saved)


def test_an_interrupted_lit_run_resumes_to_the_same_weights(after_siglip):
    from training.run import run_stage

    root, config = after_siglip
    whole = _copy(config, root, "whole")
    run_stage(whole, "lit")
    cut = _copy(config, root, "cut", stop_after_steps=3)
    run_stage(cut, "lit")
    cut["lit"].pop("stop_after_steps")
    (Path(cut["output_dir"]) / "lit" / "DONE").unlink()  # as a kill leaves it: no DONE
    run_stage(cut, "lit")  # the same command again: it continues from step 3

    a = load_file(Path(whole["output_dir"]) / "lit" / "final" / "trainable.safetensors")
    b = load_file(Path(cut["output_dir"]) / "lit" / "final" / "trainable.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_lit_without_a_siglip_to_lock_is_one_line(tmp_path, tiny_data):
    from training.checks import InputError, check_stages

    config = tiny_preset(tmp_path, tiny_data, lit=LIT)
    with pytest.raises(InputError, match=r"lit: no SigLIP result .*training.run siglip --preset tiny"):
        check_stages(config, ["lit"])
    check_stages(config, ["siglip", "lit"])  # the SigLIP stage of the same command comes first

    folder = tmp_path / "no-siglip"
    folder.mkdir()
    config["finetune"]["init_from"] = str(folder)
    with pytest.raises(InputError, match=r"lit: .*no-siglip/siglip has no SigLIP encoder"):
        check_stages(config, ["lit"])


def test_all_runs_lit_only_where_the_preset_has_it(tmp_path, tiny_data):
    from training.config import load_preset, stages_of

    assert stages_of(tiny_preset(tmp_path, tiny_data)) == ["siglip", "projector", "finetune", "merge", "eval"]
    assert stages_of(tiny_preset(tmp_path, tiny_data, lit=LIT))[:3] == ["siglip", "lit", "projector"]
    assert stages_of(load_preset("demo")) == ["vision", "siglip", "lit", "projector", "finetune", "merge", "eval"]
    assert stages_of(load_preset("demo_round")) == ["lit", "finetune", "merge", "eval"]
    assert "lit" not in stages_of(load_preset("paper"))
