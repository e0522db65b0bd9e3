"""The long vision run: one resume file carries it to another machine, and SIGTERM stops it cleanly.

Both checks compare against an uninterrupted run of the same tiny recipe: the weights after the last
step must be bitwise equal, whether the run went through a resume file in a fresh output folder or was
stopped by a signal and resumed with the same command.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from tiny_setup import tiny_preset

# slow: tiny training runs moved through a resume file and stopped with SIGTERM
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, tiny_data):
    """A tiny vision recipe (nano model, 6 cases, batch 2) with its dense targets rendered once."""
    root = tmp_path_factory.mktemp("vision_resume")
    vision = {"epochs": 50, "max_steps": 6, "batch_size": 2, "lr": 1e-3, "save_every": 3, "evaluate_every": 3,
              "train_cases": 6, "test_cases": 4, "render_workers": 1, "log_every": 1,
              "cache_dir": str(root / "dense")}
    config = tiny_preset(root, tiny_data, vision=vision)
    config["model"]["vision_stem"] = "patchify"
    from training.stages.vision import dense_caches

    dense_caches(config)
    return root, config


def with_output(config: dict, folder: Path, **vision) -> dict:
    config = copy.deepcopy(config)
    config["output_dir"] = str(folder)
    config["vision"].update(vision)
    return config


def final_weights(config: dict) -> dict:
    from training.stages.common import result_dir

    folder = result_dir(config, "vision")
    return {**load_file(str(folder / "trainable.safetensors")), **load_file(str(folder / "heads.safetensors"))}


def eval_curve(config: dict) -> list[dict]:
    lines = (Path(config["output_dir"]) / "vision" / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in lines if '"eval"' in line]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_run_moved_through_its_resume_file_ends_as_an_uninterrupted_one(recipe):
    from training.run import run_stage
    from training.stages.vision import export_resume

    root, config = recipe
    whole = with_output(config, root / "whole")
    run_stage(whole, "vision")

    # first machine: three of six steps, then the resume file
    first = with_output(config, root / "first", stop_after_steps=3)
    run_stage(first, "vision")
    resume = export_resume(first, root / "moved" / "vision.resume.safetensors")

    # the file is safetensors alone: tensors and JSON metadata, nothing to unpickle
    assert resume.read_bytes()[8:9] == b"{"
    tensors = load_file(str(resume))
    with safe_open(str(resume), framework="pt") as handle:
        meta = {k: json.loads(v) if k not in ("format", "checkpoint") else v for k, v in handle.metadata().items()}
    assert meta["trainer_state"]["global_step"] == 3 and not meta["trainer_state"]["finished"]
    assert {"epoch", "batches_in_epoch", "elapsed_s", "total_steps"} <= set(meta["trainer_state"])
    assert meta["trainer_state"]["total_steps"] == 6
    assert [r["step"] for r in meta["learning_curve"]] == [3]
    assert meta["recipe"]["stem"] == "patchify" and meta["scheduler"]["last_epoch"] == 3
    names = meta["param_names"]
    assert all(f"optimizer/{n}/exp_avg" in tensors and f"optimizer/{n}/exp_avg_sq" in tensors for n in names)
    assert any(k.startswith("model/encoder.") for k in tensors) and any(k.startswith("model/dense.") for k in tensors)

    # second machine: an empty output folder and the file; the same command continues at step 3
    second = with_output(config, root / "second", resume_file=str(resume))
    summary = run_stage(second, "vision")
    assert summary["steps"] == 6 and summary["ended"] == "schedule"
    assert_same_weights(final_weights(second), final_weights(whole))
    assert eval_curve(second) == eval_curve(whole)  # the curve came along and went on
    assert (root / "second" / "vision" / "checkpoints" / "step-3" / "trainer_state.json").exists()


def test_a_run_that_reached_its_target_moves_as_a_finished_stage(recipe):
    """The repository keeps the resume file of a run that ended at its target: a new machine's
    ``all`` then takes the stage's result from it and trains no step."""
    from training.run import run_stage
    from training.stages.vision import export_resume

    root, config = recipe
    done = with_output(config, root / "target", evaluate_every=1, target_focal_auc=0.0)  # met at every evaluation
    summary = run_stage(done, "vision")
    assert summary["steps"] == 2 and summary["ended"] == "target focal AUC reached"
    resume = export_resume(done, root / "target.resume.safetensors")
    moved = with_output(config, root / "target-moved", evaluate_every=1, target_focal_auc=0.0,
                        resume_file=str(resume))
    again = run_stage(moved, "vision")
    assert again["steps"] == 2 and again["ended"] == "target focal AUC reached"
    assert_same_weights(final_weights(moved), final_weights(done))
    assert [r["step"] for r in eval_curve(moved)] == [1, 2]
    assert not (root / "target-moved" / "vision" / "checkpoints").exists()  # not one step trained


def test_a_resume_file_of_another_recipe_is_refused(recipe):
    from training.resume_file import ResumeFileError
    from training.run import run_stage
    from training.stages.vision import export_resume

    root, config = recipe
    first = with_output(config, root / "refuse", stop_after_steps=3)
    run_stage(first, "vision")
    resume = export_resume(first, root / "refuse.resume.safetensors")
    other = with_output(config, root / "other", resume_file=str(resume), batch_size=3)
    with pytest.raises(ResumeFileError, match="batch_size"):
        run_stage(other, "vision")


def test_sigterm_saves_a_checkpoint_and_the_same_command_resumes(recipe):
    from training.run import run_stage

    root, config = recipe
    stopped = with_output(config, root / "stopped", max_steps=12, save_every=1000, evaluate_every=0)
    whole = with_output(config, root / "whole12", max_steps=12, save_every=1000, evaluate_every=0)
    # the command runs with this process's torch thread count: bitwise equality needs the same
    # reduction order (earlier tests in this process may have changed it)
    stopped.setdefault("train", {})["num_threads"] = torch.get_num_threads()
    preset = root / "stopped.yaml"
    preset.write_text(yaml.safe_dump(stopped))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "training.run", "vision", "--preset", str(preset)]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = root / "stopped" / "vision" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.exists() and metrics.read_text().strip():  # step 1 is logged: the loop runs
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert not (root / "stopped" / "vision" / "DONE").exists()
    checkpoints = list((root / "stopped" / "vision" / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 1
    state = json.loads((checkpoints[0] / "trainer_state.json").read_text())
    assert 1 <= state["global_step"] < 12 and not state["finished"]

    summary = run_stage(stopped, "vision")  # what `python -m training.run vision` does next
    assert summary["steps"] == 12
    run_stage(whole, "vision")
    assert_same_weights(final_weights(stopped), final_weights(whole))
