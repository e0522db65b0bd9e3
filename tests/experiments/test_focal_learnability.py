"""The focal-lesion learnability experiment runs end to end on a small dense cache, so the numbers in
docs/training.md come from a script that still works; its budget counts training minutes only."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


@pytest.fixture(scope="module")
def dense_cache(tmp_path_factory) -> Path:
    from training.data.dense import DenseCache, DenseSpec

    root = tmp_path_factory.mktemp("dense")
    DenseCache(root / "train", DenseSpec(0, "train", 4, sampler="lesion-rich")).build(workers=1, progress=None)
    DenseCache(root / "test", DenseSpec(0, "test", 8)).build(workers=1, progress=None)
    return root


def _lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_trains_within_its_budget_scores_whole_volumes_and_restarts_from_its_weights(dense_cache, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("focal_learnability", EXPERIMENTS / "focal_learnability.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules["focal_learnability"] = script
    spec.loader.exec_module(script)
    weights = tmp_path / "plain.safetensors"
    common = ["--cache", str(dense_cache), "--arch", "plain", "--batch", "2", "--threads", "1", "--minutes", "0.005"]

    script.main(common + ["--out", str(weights)])
    (last,) = _lines(capsys.readouterr().out)  # the budget ends before the first scheduled evaluation
    assert last["step"] >= 1 and last["cases"] == 2 * last["step"]
    assert {"mean", "any", "lesion_vs_parenchyma_cells"} <= set(last["case_auc"])
    assert weights.exists()

    script.main(common + ["--init", str(weights), "--where"])
    lines = _lines(capsys.readouterr().out)
    assert lines[0]["step"] == 0 and lines[0]["case_auc"] == last["case_auc"]  # scored before it trains
    assert lines[1]["step"] >= 1 and "where_max" in lines[-1]
