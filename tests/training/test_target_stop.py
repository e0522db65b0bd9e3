"""A target score ends a run early (``train(stop_when=...)``, the vision stage's ``target_focal_auc``):
the run is finished, its last checkpoint is the step it stopped at, and running it again trains nothing."""

from __future__ import annotations

import json

import torch
from torch import nn

from training.loop import LoopConfig, train
from training.stages.vision import target_reached


def _run(tmp_path, stop_when, aucs=(0.90, 0.96, 0.94, 0.95, 0.97, 0.99, 0.99), stop_after_steps=None):
    data = [{"x": torch.rand(4)} for _ in range(40)]
    calls = []

    def evaluate(model):
        calls.append(1)
        return {"test": {"focal_case_auc_dense": aucs[len(calls) - 1]}}

    cfg = LoopConfig(epochs=1, max_steps=14, batch_size=2, save_every=5, log_every=1,
                     stop_after_steps=stop_after_steps)
    _, state, _ = train(name="target", model=nn.Linear(4, 1), dataset=data,
                        collate_fn=lambda items: {"x": torch.stack([i["x"] for i in items])},
                        compute_loss=lambda m, b: (m(b["x"]).pow(2).mean(), {}), cfg=cfg, output_dir=tmp_path,
                        evaluate=evaluate, evaluate_every=2, stop_when=stop_when)
    return state, len(calls)


def test_two_evaluations_in_a_row_at_the_target_end_the_run_as_finished(tmp_path):
    stop_when = target_reached(0.95)
    state, evaluations = _run(tmp_path, stop_when)
    # AUC per evaluation 0.90, 0.96, 0.94, 0.95, 0.97: the 4th and 5th are >= 0.95, at steps 8 and 10
    assert evaluations == 5 and state.global_step == 10 and state.finished and stop_when.reached
    saved = json.loads((tmp_path / "checkpoints" / "step-10" / "trainer_state.json").read_text())
    assert saved["finished"] and saved["global_step"] == 10
    again, evaluations = _run(tmp_path, target_reached(0.95))  # the same command again: nothing to do
    assert again.global_step == 10 and evaluations == 0


def test_without_a_target_the_whole_schedule_runs(tmp_path):
    state, evaluations = _run(tmp_path, None)
    assert state.global_step == 14 and state.finished and evaluations == 7


def test_the_two_evaluations_in_a_row_span_a_stop_and_a_resume(tmp_path):
    # first process: evaluations at steps 2 and 4 (0.90, 0.96), cut at step 5 (checkpoint step-5)
    first = target_reached(0.95)
    state, evaluations = _run(tmp_path, first, aucs=(0.90, 0.96), stop_after_steps=5)
    assert state.global_step == 5 and not state.finished and evaluations == 2 and not first.reached
    # the resumed process: its first evaluation (step 6) is the second at the target in a row
    second = target_reached(0.95)
    state, evaluations = _run(tmp_path, second, aucs=(0.97, 0.99, 0.99, 0.99, 0.99))
    assert evaluations == 1 and state.global_step == 6 and state.finished and second.reached
