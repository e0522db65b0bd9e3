"""benchmarks/gpu_vllm.py end to end on CPU with a tiny Qwen2 (the GPU run uses the Qwen2.5-7B shape)."""

import importlib.util
from pathlib import Path

import pytest

from napari_med3dvlm.inference.vllm_backend import vllm_installed

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_roofline_counts_the_weights_a_decoding_step_reads():
    module = _load("gpu_vllm")
    arch = module.architecture(tiny=False)
    bf16 = module.decode_bytes_per_step(arch, "bfloat16", context=0)
    assert 14.0e9 < bf16 < 15.5e9  # Qwen2.5-7B without its 1.09 GB embedding table: ~7.07 B weights in bf16
    assert module.decode_bytes_per_step(arch, "fp8", context=0) == pytest.approx(bf16 / 2, rel=0.01)
    kv = module.decode_bytes_per_step(arch, "bfloat16", context=1000) - bf16
    assert kv == 2 * 28 * 4 * 128 * 1000 * 2  # K and V, 28 layers, 4 KV heads of 128, bf16


@pytest.mark.slow
@pytest.mark.skipif(not vllm_installed(), reason="vLLM is not installed (bash scripts/setup-vllm.sh)")
def test_gpu_vllm_script_runs_on_cpu_with_a_tiny_config(capsys):
    module = _load("gpu_vllm")
    assert module.main(["--tiny", "--tokens", "8", "--rounds", "1", "--concurrency", "4", "--prompt-len", "32"]) == 0
    out = capsys.readouterr().out
    assert "copy bandwidth" in out and "failed" not in out
    assert "float32: single-stream decode tok/s" in out and "% of roofline" in out
    assert "float32: TTFT (32 embeddings) ms" in out and "float32: 4 concurrent requests:" in out
