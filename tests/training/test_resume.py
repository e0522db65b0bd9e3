"""A run killed with SIGKILL mid-stage and resumed ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny_setup import tiny_preset, write_preset

# slow: a training run killed with SIGKILL and resumed (minutes)
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# No projector stage before it; batches of one task each, as the demo recipe fine-tunes.
STEPS = {"max_steps": 24, "save_every": 3, "from_scratch": True, "batch_by_task": True}


def _command(preset: Path, stage: str) -> list[str]:
    return [sys.executable, "-m", "training.run", stage, "--preset", str(preset)]


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


def _run(preset: Path, stage: str) -> None:
    result = subprocess.run(_command(preset, stage), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def _kill_after_checkpoint(preset: Path, stage: str, checkpoint: Path) -> None:
    process = subprocess.Popen(
        _command(preset, stage), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    while not (checkpoint / "trainer_state.json").exists():
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, tiny_data):
    stage = "finetune"
    uninterrupted = tiny_preset(tmp_path / "a", tiny_data, finetune=STEPS)
    interrupted = tiny_preset(tmp_path / "b", tiny_data, finetune=STEPS)
    preset_a = write_preset(uninterrupted, tmp_path / "a.yaml")
    preset_b = write_preset(interrupted, tmp_path / "b.yaml")

    _run(preset_a, stage)
    stage_dir = Path(interrupted["output_dir"]) / stage
    _kill_after_checkpoint(preset_b, stage, stage_dir / "checkpoints" / "step-6")
    assert not (stage_dir / "DONE").exists(), "the run finished before it could be killed"
    _run(preset_b, stage)

    expected = load_file(str(Path(uninterrupted["output_dir"]) / stage / "final" / "trainable.safetensors"))
    resumed = load_file(str(stage_dir / "final" / "trainable.safetensors"))
    assert expected.keys() == resumed.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, resumed[name]), name
    adapter_a = load_file(str(Path(uninterrupted["output_dir"]) / stage / "final" / "adapter" / "adapter_model.safetensors"))
    adapter_b = load_file(str(stage_dir / "final" / "adapter" / "adapter_model.safetensors"))
    assert adapter_a.keys() == adapter_b.keys() and len(adapter_a) > 0
    for name, tensor in adapter_a.items():
        assert torch.equal(tensor, adapter_b[name]), name
