"""Fine-tuning's lesion-reading curve: the report's tokens split by sentence kind, and the curve logged by
the stage on phantom test cases (and a one-line error where the data holds no truth)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from tiny_setup import IMAGE_SIZE, tiny_preset
from training.evaluation.finding_tokens import encode, report_parts

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))
from tiny_vlm import tiny_tokenizer  # noqa: E402

REPORT = ("Arterial phase CT images of the upper abdomen in the coronal plane. A 3.5 cm mass in the spleen. "
          "No focal liver lesion. There is a cyst in the tail of the pancreas measuring 3.0 cm. No free fluid.")


def test_every_report_token_belongs_to_its_sentence_kind():
    assert [kind for _, _, kind in report_parts(REPORT)] == ["technique", "finding", "normal", "finding", "normal"]
    tokenizer = tiny_tokenizer()
    prompt = "<im_patch><im_patch> Describe the findings."
    ids, kinds, prompt_len = encode(tokenizer, prompt, REPORT)
    assert ids[-1] == tokenizer.eos_token_id and kinds[-1] is None
    assert all(kind is None for kind in kinds[:prompt_len])
    text = {kind: tokenizer.decode([i for i, k in zip(ids, kinds) if k == kind]) for kind in ("technique", "finding", "normal")}
    assert text["technique"].strip() == REPORT.split(". A 3.5")[0] + "."
    assert text["finding"].split() == "A 3.5 cm mass in the spleen. There is a cyst in the tail of the pancreas measuring 3.0 cm.".split()
    assert text["normal"].split() == "No focal liver lesion. No free fluid.".split()


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory) -> Path:
    from napari_med3dvlm.phantoms.writers import WriteOptions, write_split

    root = tmp_path_factory.mktemp("phantoms")
    write_split(root, {"train": 4, "test": 4}, seed=3, options=WriteOptions(size=IMAGE_SIZE, nifti=False), workers=1)
    return root


@pytest.mark.parametrize("train_vision", [True, False])  # the tower's tokens recomputed, or encoded once
def test_fine_tuning_logs_its_lesion_reading_curve_on_phantom_test_cases(tmp_path, phantom_data, train_vision):
    from training.run import run_stage

    config = tiny_preset(tmp_path, phantom_data,
                         finetune={"from_scratch": True, "evaluate_every": 2, "evaluate_cases": 3, "max_steps": 4,
                                   "train_vision": train_vision})
    info = run_stage(config, "finetune")
    records = [json.loads(line) for line in (tmp_path / "runs" / "finetune" / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["eval"]) for r in records if "eval" in r]
    assert [step for step, _ in curve] == [2, 4]
    final = info["findings_test"]
    for scores in [s for _, s in curve] + [final]:
        for kind in ("technique", "finding", "normal"):
            for image in ("real", "blank"):
                assert math.isfinite(scores[f"loss_{kind}_{image}"]) and scores[f"loss_{kind}_{image}"] > 0
        assert 0.0 <= scores["report_ranked_real"] <= 1.0 and 0.0 <= scores["report_ranked_blank"] <= 1.0
        assert scores["finding_gain"] == pytest.approx(scores["loss_finding_blank"] - scores["loss_finding_real"], abs=2e-4)
    assert final == curve[-1][1]  # the same model, the same cases: the last point again


def test_the_curve_on_data_without_truth_is_one_line_before_any_model_is_built(tmp_path, tiny_data):
    from training.checks import InputError
    from training.run import run_stage

    config = tiny_preset(tmp_path, tiny_data, finetune={"from_scratch": True, "evaluate_every": 2})
    with pytest.raises(InputError, match=r"finetune: evaluate_every needs phantom test cases .*finetune.evaluate_every=0"):
        run_stage(config, "finetune")
    assert not (tmp_path / "runs" / "finetune" / "metrics.jsonl").exists()
