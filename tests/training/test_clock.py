"""A time budget counts training, not evaluation or checkpoint writing (training/clock.py), in the
loop as in the experiments."""

from __future__ import annotations

import json
import time

import torch
from torch import nn

from training.clock import TrainingClock
from training.loop import LoopConfig, train


def test_time_inside_a_pause_does_not_count_and_nested_pauses_count_once():
    created = time.monotonic()
    clock = TrainingClock(before=100.0)
    with clock.paused():
        time.sleep(0.2)
        with clock.paused():
            time.sleep(0.1)
        assert clock.elapsed() < 100.1  # a pause under way does not count either
    time.sleep(0.05)
    assert 100.05 <= clock.elapsed() <= 100.0 + (time.monotonic() - created) - 0.3
    assert not clock.over(None) and clock.over(100.0 / 60) and not clock.over(2.0)


def test_the_loop_clock_leaves_out_evaluation(tmp_path):
    """Evaluation of 0.25 s after each of 4 steps: the trainer state, the log lines and the learning
    curve all count training seconds only, so turning the curve on does not eat a time budget."""
    data = [{"x": torch.rand(4)} for _ in range(16)]

    def slow_evaluation(model):
        time.sleep(0.25)
        return {"weight": float(model.weight.detach().sum())}

    cfg = LoopConfig(epochs=1, max_steps=4, batch_size=2, save_every=2, log_every=1)
    started = time.monotonic()
    _, state, _ = train(name="clock", model=nn.Linear(4, 1), dataset=data,
                        collate_fn=lambda items: {"x": torch.stack([i["x"] for i in items])},
                        compute_loss=lambda m, b: (m(b["x"]).pow(2).mean(), {}), cfg=cfg, output_dir=tmp_path,
                        evaluate=slow_evaluation, evaluate_every=1)
    assert state.finished and state.global_step == 4
    wall = time.monotonic() - started
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in records if "eval" in r]) == 4
    assert state.elapsed_s < wall - 1.0  # four evaluations of 0.25 s left out
    assert max(r["elapsed_s"] for r in records) <= round(state.elapsed_s, 2)  # records keep 2 decimals
    saved = json.loads((tmp_path / "checkpoints" / "step-4" / "trainer_state.json").read_text())
    assert saved["elapsed_s"] == state.elapsed_s
