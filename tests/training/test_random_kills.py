"""The projector stage killed with SIGKILL at seeded random points, resumed after each kill, ends
with exactly the weights, step count and learning curve of an uninterrupted run.

A kill point is a step the run must have logged plus a random delay after it (up to 1.5 steps' time,
measured on the uninterrupted run, and never past the next logged step, so a run cannot finish first
however fast or loaded the machine is), so kills land inside
forward/backward passes, checkpoint writes and checkpoint rotation alike. The killed runs are
processes running ``training.run.main`` (what ``python -m training.run`` runs), forked from a
forkserver that has imported what the stage needs once, so that five kills do not cost five imports
(about 25 s each on a busy 2-core machine); the uninterrupted run and the last resume run in this
process (one thread, as in the children).
"""

from __future__ import annotations

import json
import multiprocessing
import random
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny_setup import tiny_preset, write_preset

# slow: training runs killed at random points and resumed
pytestmark = pytest.mark.slow

SEED = 1515
KILLS = 5
STAGE = "projector"
STEPS = {"max_steps": 16, "save_every": 2, "from_scratch": True}  # no SigLIP stage before it


#: Packages whose modules, as imported by the uninterrupted run, the forkserver imports up front.
PRELOAD_PACKAGES = ("torch", "transformers", "accelerate", "tokenizers", "safetensors", "huggingface_hub",
                    "numpy", "scipy", "sympy", "PIL", "training", "napari_med3dvlm")


#: Modules that pull in lancedb (its runtime does not survive a fork) and the stage does not need.
NOT_PRELOADED = ("napari_med3dvlm.retrieval", "napari_med3dvlm.widgets", "training.stages.eval", "training.evaluation")


def _context():
    """A forkserver context; if this starts the server, it imports what this process has imported
    from PRELOAD_PACKAGES (another test may have started it already: then children import more)."""
    loaded = sorted(
        m for m in list(sys.modules)
        if m.split(".")[0] in PRELOAD_PACKAGES and "._" not in m and not m.startswith(NOT_PRELOADED)
    )
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(loaded)
    return context


def _logged_step(metrics: Path) -> int:
    """The last step in metrics.jsonl (a resumed run trims the steps it redoes)."""
    if not metrics.exists():
        return 0
    step = 0
    for line in metrics.read_text().splitlines():
        try:
            step = max(step, int(json.loads(line).get("step", 0)))
        except (ValueError, AttributeError):
            pass  # a line being written
    return step


def _kill_at(preset: Path, stage_dir: Path, step: int, delay: float) -> int:
    """Start the stage and SIGKILL it ``delay`` s after it has logged ``step``, or as soon as it logs
    the next step; returns the step it had logged."""
    from training.run import main

    process = _context().Process(target=main, args=([STAGE, "--preset", str(preset)],))
    process.start()
    try:
        deadline = time.monotonic() + 600  # a loaded machine is slow, not hung
        while _logged_step(stage_dir / "metrics.jsonl") < step:
            assert process.is_alive(), f"the stage stopped with exit code {process.exitcode}"
            assert time.monotonic() < deadline, f"step {step} never came"
            time.sleep(0.01)
        until = time.monotonic() + delay
        while time.monotonic() < until and _logged_step(stage_dir / "metrics.jsonl") <= step:
            time.sleep(0.005)
        process.kill()  # SIGKILL
        process.join(timeout=60)
    finally:
        if process.is_alive():
            process.kill()
            process.join()
    assert process.exitcode == -signal.SIGKILL, "the stage finished before the kill"
    return _logged_step(stage_dir / "metrics.jsonl")


def _run_here(config: dict) -> None:
    from training.run import run_stage

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_stage(config, STAGE)
    finally:
        torch.set_num_threads(threads)


def _final(stage_dir: Path) -> tuple[dict, dict, list]:
    weights = load_file(str(stage_dir / "final" / "trainable.safetensors"))
    info = json.loads((stage_dir / "final" / "info.json").read_text())
    curve = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    return weights, info, [(r["step"], r["loss"], r["lr"]) for r in curve]


def test_killed_at_random_points_then_resumed_matches_uninterrupted_run(tmp_path, tiny_data):
    train = {"num_threads": 1}  # one thread: the same float reduction order in every process
    config_a = tiny_preset(tmp_path / "a", tiny_data, projector=STEPS, train=train)
    config_b = tiny_preset(tmp_path / "b", tiny_data, projector=STEPS, train=train)
    preset_b = write_preset(config_b, tmp_path / "b.yaml")
    stage_a, stage_b = Path(config_a["output_dir"]) / STAGE, Path(config_b["output_dir"]) / STAGE
    _run_here(config_a)

    elapsed = [r["elapsed_s"] for r in map(json.loads, (stage_a / "metrics.jsonl").read_text().splitlines())]
    step_s = max(0.01, (elapsed[-1] - elapsed[0]) / (len(elapsed) - 1))

    rng = random.Random(SEED)
    steps = sorted(rng.sample(range(1, STEPS["max_steps"] - 5), KILLS))
    delays = [rng.uniform(0.0, 1.5) * step_s for _ in steps]
    killed_after = []
    for step, delay in zip(steps, delays):
        step = max(step, killed_after[-1] + 1 if killed_after else 1)  # beyond what the last run logged
        killed_after.append(_kill_at(preset_b, stage_b, step, delay))
    assert len(killed_after) == KILLS and not (stage_b / "DONE").exists()
    print(f"\nkilled after steps {killed_after} (targets {steps}, delays {[round(d, 3) for d in delays]} s)")
    _run_here(config_b)

    weights_a, info_a, curve_a = _final(stage_a)
    weights_b, info_b, curve_b = _final(stage_b)
    assert info_b["steps"] == info_a["steps"] == STEPS["max_steps"]
    assert weights_a.keys() == weights_b.keys() and weights_a
    for name, tensor in weights_a.items():
        assert torch.equal(tensor, weights_b[name]), name
    assert curve_b == curve_a  # every step logged once, with the same loss and learning rate
