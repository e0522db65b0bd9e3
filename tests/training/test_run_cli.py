"""`python -m training.run` as a newcomer meets it: one line and exit status 2 for every user error
(missing data, missing earlier stage, wrong M3D layout, bad override, unknown preset), a fast
``--dry-run`` plan that matches the preset, and ``all --preset demo`` writing its own phantom split."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tiny_setup import IMAGE_SIZE, write_tiny_m3d
from training.config import LOOP_KEYS, load_preset

REPO = Path(__file__).resolve().parents[2]
SPLIT_COMMAND = ("python -m napari_med3dvlm.phantoms split --out data/phantoms --train 2000 --test 200 "
                 "--size 32 128 128 --seed 0 --no-nifti")


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


def run_cli(*args, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    """The command as a user types it, from ``cwd`` (a clean folder: the preset's relative paths
    resolve there, never into this checkout's data/ or runs/)."""
    return subprocess.run([sys.executable, "-m", "training.run", *map(str, args)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, one line on stderr that holds every fragment, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_projector_without_data_names_the_missing_file_and_the_command_that_writes_it(tmp_path):
    line = assert_user_error(run_cli("projector", "--preset", "demo", cwd=tmp_path),
                             "data/phantoms/M3D_Cap.json", SPLIT_COMMAND, "preset demo")
    assert "data/phantoms/data/phantoms" not in line


def test_missing_earlier_stage_stops_unless_asked_to_start_from_scratch(tmp_path, tiny_data):
    args = ("projector", "--preset", "demo", "--data", tiny_data, f"data.image_size={list(IMAGE_SIZE)}")
    assert_user_error(run_cli(*args, cwd=tmp_path), "no SigLIP result", "runs/demo/siglip/final/trainable.safetensors",
                      "python -m training.run siglip --preset demo", "--from-scratch")
    # asked for: the checks pass (the dry run shows it) and the plan says what starts from random weights
    result = run_cli(*args, "--from-scratch", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "from_scratch" in result.stdout and "checks: ok" in result.stdout


def test_wrong_m3d_layout_for_paper_is_found_before_any_model_is_loaded(tmp_path):
    # A common mistake: M3D-Cap unpacked so that its JSON's paths are relative to M3D_Cap_npy/, not to data.root.
    data = tmp_path / "data"
    write_tiny_m3d(data / "M3D_Cap_npy")
    start = time.perf_counter()
    result = run_cli("siglip", "--preset", "paper", cwd=tmp_path)
    assert_user_error(result, "siglip: missing data/cases/train000/ct.npy", "data/M3D_Cap_npy/M3D_Cap.json",
                      "relative to data.root", "preset paper")
    assert time.perf_counter() - start < 60  # a check, not a 7B model load

    # The layout right but the volumes at another size than the preset's: named before training too.
    write_tiny_m3d(tmp_path / "m3d", n_train=4)
    paper = {"cap_json": "M3D_Cap.json"}
    result = run_cli("siglip", "--preset", "paper", "--data", tmp_path / "m3d",
                     *[f"data.{k}={v}" for k, v in paper.items()], cwd=tmp_path)
    assert_user_error(result, f"has shape (1, {', '.join(map(str, IMAGE_SIZE))}), data.image_size is [128, 256, 256]")


@pytest.mark.parametrize("override, fragments", [
    ("finetune.max_step=5", ["unknown key finetune.max_step in preset demo", "did you mean finetune.max_steps?"]),
    ("finetune.max_steps=ten", ["finetune.max_steps in preset demo takes an integer", "'ten'"]),
    ("siglip.lr=[1,2]", ["siglip.lr in preset demo takes a number"]),
    ("train.mixed_precision=fp32", ["train.mixed_precision in preset demo takes auto, no, fp16, bf16 or fp8"]),
    ("finetun.max_steps=5", ["unknown section finetun in preset demo", "did you mean finetune?"]),
    ("data.image_size=[32,128", ["not valid YAML"]),
    ("max_steps", ["not of the form key=value"]),
])
def test_bad_overrides_name_the_key_and_the_preset(tmp_path, override, fragments):
    assert_user_error(run_cli("finetune", "--preset", "demo", override, cwd=tmp_path), override, *fragments)


def test_unknown_preset_and_stage_are_one_line_errors(tmp_path):
    assert_user_error(run_cli("all", "--preset", "demo_cpu", cwd=tmp_path), "no preset 'demo_cpu'", "demo, demo_gpu, demo_phase, demo_round, paper")
    assert_user_error(run_cli("finetuning", cwd=tmp_path), "invalid choice: 'finetuning'")
    assert_user_error(run_cli("all", "--data", tmp_path / "nowhere", cwd=tmp_path), "no such folder")


def test_valid_overrides_keep_their_yaml_types():
    from training.config import apply_overrides

    config = apply_overrides(load_preset("paper"), [
        "train.mixed_precision=no", "eval.vqa_samples=null", "projector.epochs=0.5", "vision.max_steps=3",
        "finetune.task_repeats={caption: 2}", "data.augment.flip_prob=0.2", "model.language_model_architecture.num_hidden_layers=2",
    ])
    assert config["train"]["mixed_precision"] is False and config["eval"]["vqa_samples"] is None
    assert config["projector"]["epochs"] == 0.5 and config["vision"] == {"max_steps": 3}
    assert config["finetune"]["task_repeats"] == {"caption": 2} and config["data"]["augment"]["flip_prob"] == 0.2
    assert config["model"]["language_model_architecture"]["num_hidden_layers"] == 2


def test_every_loop_setting_is_a_known_override_key():
    from training.loop import LoopConfig

    assert {f.name for f in dataclasses.fields(LoopConfig)} <= set(LOOP_KEYS)


def _stage_block(stdout: str, stage: str) -> str:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().split(":")[0].endswith(f". {stage}"))
    block = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith("     "):
            break
        block.append(line)
    return "\n".join(block)


def test_dry_run_prints_the_demo_plan_quickly_from_a_clean_checkout(tmp_path):
    preset = load_preset("demo")
    start = time.perf_counter()
    result = run_cli("all", "--preset", "demo", "--dry-run", cwd=tmp_path)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert elapsed < 10, elapsed
    out = result.stdout
    assert out.startswith("plan: python -m training.run all --preset demo")
    assert "\ndevice: " in out and "checks: ok" in out
    # the stages in order, none done
    numbered = [line.split(". ", 1)[1].split(":")[0] for line in out.splitlines() if line.startswith("  ") and ". " in line
                and line.strip()[0].isdigit()]
    assert numbered == ["vision", "siglip", "lit", "projector", "finetune", "merge", "eval"]
    # the data it will write first, as the preset describes it
    spec = preset["data"]["phantoms"]
    assert f"data/phantoms (data.root): missing; written first, {spec['train']:,} train + {spec['test']:,} test" in out
    # steps and budgets per stage from the preset
    vision = preset["vision"]
    steps = math.ceil(vision["epochs"] * (vision["train_cases"] // vision["batch_size"]))
    assert f"{steps:,} steps of {vision['batch_size']}" in _stage_block(out, "vision")
    # its own lesion-rich cases with dense targets, not the split at data.root; none rendered yet
    assert (f"{vision['train_cases']:,} lesion-rich train + {vision['test_cases']:,} test phantoms with dense "
            f"targets in runs/demo/vision_dense (rendered first; not data.root)") in _stage_block(out, "vision")
    for stage in ("siglip", "lit", "projector", "finetune"):
        block = _stage_block(out, stage)
        assert f"time budget {preset[stage]['max_minutes']:g} min" in block
        assert f"writes runs/demo/{stage}/" in block
    siglip = preset["siglip"]
    steps = math.ceil(siglip["epochs"] * (spec["train"] // siglip["batch_size"]))
    assert f"{spec['train']:,} samples, {siglip['epochs']:g} epochs: {steps:,} steps" in _stage_block(out, "siglip")
    assert preset["merge"]["embedded_output"] in _stage_block(out, "merge")
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()  # nothing written


def test_a_round_runs_only_its_own_stages_from_the_committed_candidate(tmp_path):
    """`all --preset demo_round` continues from the committed candidate folder: text-side tuning against
    its locked image tower, fine-tuning, merge and eval, none of the stages whose results that folder
    already holds."""
    # its own output folder: a round already run in this checkout would show as done
    result = run_cli("all", "--preset", "demo_round", f"output_dir={tmp_path / 'runs'}", "--dry-run", cwd=REPO)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    numbered = [line.split(". ", 1)[1].split(":")[0] for line in out.splitlines() if line.startswith("  ") and ". " in line
                and line.strip()[0].isdigit()]
    assert numbered == ["lit", "finetune", "merge", "eval"]
    assert "locks training/checkpoints/demo-candidate's image tower" in _stage_block(out, "lit")
    assert ("continues from training/checkpoints/demo-candidate (an embedded model folder)"
            in _stage_block(out, "finetune"))
    assert "checks: ok" in out


def test_force_starts_a_stage_over_instead_of_resuming_checkpoints_of_another_start(tmp_path, tiny_data, monkeypatch):
    """A round run again with --force must not resume the checkpoints of the round before (trained from
    another candidate): the plan says the folder goes, and the stage starts with none of it left."""
    runs = tmp_path / "runs"
    old = runs / "finetune" / "checkpoints" / "step-1565"
    old.mkdir(parents=True)
    (old / "trainer_state.json").write_text("{}")
    (runs / "finetune" / "DONE").write_text("{}")
    # its own data (a fresh clone has no data/phantoms); from the checkout, where demo_round's candidate is
    args = ("finetune", "--preset", "demo_round", "--data", tiny_data, f"data.image_size={list(IMAGE_SIZE)}",
            f"output_dir={runs}", "--dry-run")
    plain = run_cli(*args, cwd=REPO)
    assert plain.returncode == 0, plain.stderr
    assert "1. finetune: done, skipped" in plain.stdout
    forced = run_cli(*args, "--force", cwd=REPO)
    assert forced.returncode == 0, forced.stderr
    assert f"1. finetune: to run again from its start (--force): {runs / 'finetune'}" in forced.stdout
    assert "is deleted first" in forced.stdout and old.exists()  # a plan deletes nothing

    import training.run as run

    seen = {}
    monkeypatch.setattr(run, "_stage_runner", lambda stage: lambda config: seen.update(
        left=sorted(p.name for p in (runs / stage).rglob("*"))) or {"steps": 0})
    monkeypatch.setattr("training.checks.check_stages", lambda config, stages: None)
    config = {"output_dir": str(runs), "name": "demo_round"}
    assert run.run_stage(config, "finetune") == {}  # DONE holds "{}": skipped, nothing deleted
    assert old.exists() and seen == {}
    run.run_stage(config, "finetune", force=True)
    assert seen["left"] == [] and not old.exists()
    assert json.loads((runs / "finetune" / "DONE").read_text())["steps"] == 0


def test_the_phase_continuation_starts_from_the_committed_lesion_run(tmp_path):
    """`vision --preset demo_phase` continues the finished lesion run (its committed resume file) with the
    technique target, into a resume file of its own."""
    result = run_cli("vision", "--preset", "demo_phase", f"output_dir={tmp_path / 'runs'}", "--dry-run", cwd=REPO)
    assert result.returncode == 0, result.stderr
    block = _stage_block(result.stdout, "vision")
    assert "starts from training/checkpoints/demo-vision.resume.safetensors" in block
    assert "technique target (region, phase, plane) at weight 1" in block and "800 steps of 16" in block
    assert "checks: ok" in result.stdout


def test_dry_run_counts_the_data_each_stage_reads(tmp_path, tiny_data):
    preset = load_preset("demo")
    result = run_cli("finetune", "--preset", "demo", "--data", tiny_data, f"data.image_size={list(IMAGE_SIZE)}",
                     "--from-scratch", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    cap = json.loads((tiny_data / "M3D_Cap.json").read_text())
    assert f"M3D_Cap.json train: {len(cap['train'])} entries" in result.stdout
    rows = {name: len((tiny_data / name).read_text().strip().splitlines()) - 1
            for name in ("M3D_VQA_train.csv", "M3D_VQA_yn_train.csv")}
    finetune = preset["finetune"]
    per_task = {"caption": len(cap["train"]), "closed": rows["M3D_VQA_train.csv"], "open": rows["M3D_VQA_train.csv"],
                "yn": rows["M3D_VQA_yn_train.csv"]}
    samples = sum(per_task[t] * finetune["task_repeats"].get(t, 1) for t in finetune["tasks"])
    steps = math.ceil(finetune["epochs"] * (samples // finetune["batch_size"]))
    assert f"{samples:,} samples, {finetune['epochs']:g} epochs: {steps:,} steps of {finetune['batch_size']}" in result.stdout


def test_an_interrupted_phantom_split_resumes_with_the_cases_it_has(tmp_path):
    from napari_med3dvlm.phantoms.writers import SUBDIR, WriteOptions, write_split

    options = WriteOptions(size=IMAGE_SIZE, nifti=False)
    reference = write_split(tmp_path / "a", {"train": 3}, options=options, workers=1)
    root = tmp_path / "b"
    shutil.copytree(tmp_path / "a", root)
    (root / "M3D_Cap.json").unlink()  # as if killed before the end
    (root / SUBDIR / "train_00001" / "case.json").unlink()  # ... while writing case 1
    kept = (root / SUBDIR / "train_00000" / "case.json").stat().st_mtime_ns
    rendered = []
    written = write_split(root, {"train": 3}, options=options, workers=1, keep_written=True,
                          progress=lambda done, total: rendered.append(done))
    assert written == reference and rendered == [1, 2, 3]
    assert (root / SUBDIR / "train_00000" / "case.json").stat().st_mtime_ns == kept  # not rendered again
    assert (root / SUBDIR / "train_00001" / "case.json").is_file()
    assert (root / "M3D_Cap.json").read_text() == (tmp_path / "a" / "M3D_Cap.json").read_text()
    for name in ("M3D_VQA_train.csv", "M3D_VQA_yn_train.csv"):
        assert (root / name).read_text() == (tmp_path / "a" / name).read_text()


def tiny_demo_overrides(tmp_path: Path, base: Path) -> list[str]:
    """The demo preset at toy size: a few phantom cases, tiny LLM, a couple of steps per stage."""
    steps = {"max_steps": 2, "batch_size": 2, "save_every": 2, "max_minutes": "null"}
    overrides = [
        f"output_dir={tmp_path / 'runs'}", "data.root=phantoms", f"data.image_size={list(IMAGE_SIZE)}",
        "data.phantoms={train: 4, test: 2, seed: 0, nifti: false, workers: 1}",
        f"model.language_model={base}", "model.low_input_size=[1,128]", "model.high_input_size=[1,256]",
        "model.low_output_size=[4,4]", "model.high_output_size=[4,4]", "model.proj_out_num=8", "model.max_length=96",
        "train.num_threads=1", "vision.train_cases=4", "vision.test_cases=2", "vision.render_workers=1",
        "vision.evaluate_every=2", f"merge.output={tmp_path / 'merged'}", f"merge.embedded_output={tmp_path / 'embedded'}",
        "scope.enabled=false", "eval.retrieval_sizes=[2]", "eval.caption_samples=2", "eval.vqa_samples=2",
        "eval.yn_samples=2", "eval.max_new_tokens=4", "eval.pointing_samples=0",
    ]
    if "resume_file" in load_preset("demo").get("vision", {}):
        overrides.append("vision.resume_file=null")
    for stage in ("vision", "siglip", "lit", "projector", "finetune"):
        overrides += [f"{stage}.{key}={value}" for key, value in steps.items()]
    return overrides


@pytest.mark.slow
def test_all_demo_from_a_clean_folder_writes_its_phantom_split_and_runs_every_stage(tmp_path):
    from test_embedded_demo import _local_base

    base = _local_base(tmp_path / "base")
    work = tmp_path / "work"
    work.mkdir()
    overrides = tiny_demo_overrides(tmp_path, base)
    result = run_cli("all", "--preset", "demo", *overrides, cwd=work, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "phantom split phantoms" in result.stderr  # its progress bar
    cap = json.loads((work / "phantoms" / "M3D_Cap.json").read_text())
    assert len(cap["train"]) == 4 and len(cap["test"]) == 2
    runs = tmp_path / "runs"
    for stage in ("vision", "siglip", "lit", "projector", "finetune", "merge", "eval"):
        assert (runs / stage / "DONE").is_file(), stage
    assert json.loads((runs / "siglip" / "final" / "info.json").read_text())["vision_init"] == "vision stage"
    assert json.loads((runs / "projector" / "final" / "info.json").read_text())["vision_from_siglip"]
    assert json.loads((runs / "lit" / "final" / "info.json").read_text())["image_tower"] == "the siglip stage"
    assert "then tuned against the locked image tower" in (tmp_path / "embedded" / "model_card.md").read_text()
    card = (tmp_path / "embedded" / "model_card.md").read_text()
    assert "Started from scratch" not in card
    # Again: every stage is done and the data is there; nothing is rewritten.
    again = run_cli("all", "--preset", "demo", *overrides, "--dry-run", cwd=work)
    assert again.returncode == 0 and again.stdout.count("done, skipped") == 7, again.stdout


def test_the_model_card_says_which_stage_started_from_random_weights(tmp_path):
    from training.model_card import random_starts

    config = {"output_dir": str(tmp_path), "vision": {}}
    assert random_starts(config) == ""
    for stage, info in (("siglip", {"vision_init": "random"}), ("projector", {"vision_from_siglip": True}),
                        ("finetune", {"restored_projector_stage": False})):
        (tmp_path / stage / "final").mkdir(parents=True)
        (tmp_path / stage / "final" / "info.json").write_text(json.dumps(info))
    notes = random_starts(config)
    assert "Started from scratch" in notes and "SigLIP: the image encoder started from random weights" in notes
    assert "fine-tuning: the projector" in notes and "projector: the image encoder" not in notes


def test_a_pretrained_model_that_is_not_here_is_named_before_loading(tmp_path, tiny_data):
    result = run_cli("projector", "--preset", "paper", "--data", tiny_data, "--from-scratch",
                     *[f"data.{key}={key_file}" for key, key_file in (
                         ("cap_json", "M3D_Cap.json"), ("vqa_train", "M3D_VQA_train.csv"))],
                     f"data.image_size={list(IMAGE_SIZE)}", f"model.language_model={tmp_path / 'no-such-model'}",
                     cwd=tmp_path)
    assert_user_error(result, f"model.language_model {tmp_path / 'no-such-model'} is neither a folder nor in the "
                              "Hugging Face cache", "preset paper")


def test_options_with_fixed_values_and_incomplete_presets_are_one_line_errors(tmp_path):
    assert_user_error(run_cli("finetune", "--preset", "demo", "finetune.tasks=[caption,report]", cwd=tmp_path),
                      "unknown task 'report' in finetune.tasks", "preset demo")
    assert_user_error(run_cli("siglip", "--preset", "demo", "model.text_trainable=frozen", cwd=tmp_path),
                      "model.text_trainable is 'frozen'", "full, lora or head")
    partial = tmp_path / "mine.yaml"
    partial.write_text("name: mine\ndata: {root: data}\n")
    assert_user_error(run_cli("all", "--preset", partial, "--dry-run", cwd=tmp_path), "lacks output_dir")
