"""The performance benchmarks run end to end on tiny inputs (the GPU script on CPU, with a tiny config)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

# slow: the benchmark scripts end to end (model loads, encoder executions); not day-to-day work
pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_decode_script_runs_on_cpu_with_a_tiny_config(capsys):
    module = _load("gpu_decode")
    assert module.main(["--tiny", "--device", "cpu", "--tokens", "4", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "roofline" in out
    for variant in ("engine path (dynamic cache)", "static cache + compile"):
        line = next(line for line in out.splitlines() if line.startswith(variant) and "TTFT" in line)
        assert "decode tok/s" in line and "of roofline" in line


def test_preprocess_baseline_is_the_same_job():
    module = _load("preprocess")
    data = module.ct_like((12, 40, 40))
    module.OUT = (8, 16, 16)
    assert torch.equal(module.ours(data), module.plain_torch(data))


def test_dcformer_benchmark_executions_agree(capsys):
    module = _load("dcformer")
    assert module.main(["--variant", "nano", "--size", "16", "32", "32", "--rounds", "1", "--channels-last"]) == 0
    out = capsys.readouterr().out
    for name in ("default", "channels-last"):
        line = next(row for row in out.splitlines() if row.startswith(name + " "))
        diff = float(line.split("reference|")[1].split()[0])
        assert np.isfinite(diff) and diff <= 1e-5
    assert "ratio default / reference" in out


def test_model_load_benchmark_times_both_loads(capsys):
    module = _load("model_load")
    assert module.main(["--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "merged model cached" in out and "rebuilt and merged" in out and "ratio cached / rebuilt" in out
