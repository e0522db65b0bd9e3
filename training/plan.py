"""``--dry-run``: what a command will do, before the hours it takes.

The stages in order and which are done, the data each reads (entries per file, the files checked),
optimizer steps and time budget per stage, where the outputs go and the device. Nothing heavy is
imported (no torch, no transformers): the plan prints in about a second; the device comes from
``nvidia-smi`` when there is one.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

from .checks import (TASK_FILES, DataCheck, InputError, check_choices, check_earlier, check_weights, data_root,
                     finetune_start, stage_reads, stage_tasks)
from .config import stage_config, vision_cache_root
from .phantom_split import counts_of, missing_roots


def device_line(config: dict) -> str:
    """The accelerator the stages will use, without importing torch."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    launch = f", {processes} processes (accelerate launch)" if processes > 1 else ""
    smi = shutil.which("nvidia-smi")
    if smi and os.environ.get("CUDA_VISIBLE_DEVICES", None) != "":
        try:
            names = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                   text=True, timeout=10).stdout.split("\n")
            names = [n.strip() for n in names if n.strip()]
        except (OSError, subprocess.SubprocessError):
            names = []
        if names:
            return f"cuda: {len(names)} x {names[0]}{launch}"
    threads = config.get("train", {}).get("num_threads")
    cores = os.cpu_count() or 1
    return f"cpu: {cores} cores" + (f", {threads} threads (train.num_threads)" if threads else "") + launch


def stage_samples(config: dict, stage: str, data: DataCheck) -> int | None:
    """Training samples of one epoch (as the stage's dataset counts them), None when not known yet."""
    if stage == "vision":
        return int(stage_config(config, "vision").get("train_cases", 2000))
    root = data_root(config, stage)
    repeats = stage_config(config, stage).get("task_repeats") or {}
    total = 0
    for task in stage_tasks(config, stage):
        key = TASK_FILES.get(task, TASK_FILES["caption"])[0]
        path = str(Path(root.root) / str(config["data"].get(key)))
        count = data.inputs.counts.get((path, "train" if key == "cap_json" else None))
        if count is None:
            if key == "cap_json" and root.phantoms is not None:
                count = counts_of(root.phantoms).get("train", 0)  # one report per case, written first
            else:
                return None
        total += count * int(repeats.get(task, 1))
    return total


def _epochs(epochs: float) -> str:
    return f"{epochs:g} epoch" + ("" if epochs == 1 else "s")


def schedule(config: dict, stage: str, samples: int | None) -> str:
    """Optimizer steps as the loop computes them (drop_last batches), and the time budget."""
    cfg = stage_config(config, stage)
    batch = int(cfg.get("batch_size", 8))
    accumulate = int(cfg.get("gradient_accumulation_steps", 1))
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    epochs = float(cfg.get("epochs", 1.0))
    parts = []
    if samples is not None:
        per_epoch = max(1, (samples // batch // processes) // accumulate)
        steps = math.ceil(epochs * per_epoch)
        if cfg.get("max_steps"):
            steps = min(steps, int(cfg["max_steps"]))
        parts.append(f"{samples:,} samples, {_epochs(epochs)}: {steps:,} steps of {batch * accumulate * processes}")
    elif cfg.get("max_steps"):
        parts.append(f"at most {int(cfg['max_steps']):,} steps of {batch * accumulate * processes}")
    else:
        parts.append(f"{_epochs(epochs)} of batch {batch * accumulate * processes} (samples known once the data is written)")
    if cfg.get("max_minutes"):
        parts.append(f"time budget {float(cfg['max_minutes']):g} min (the schedule is fitted to it)")
    else:
        parts.append("no time budget: it runs every step")
    if cfg.get("target_focal_auc") is not None:
        parts[-1] += f" or until the test focal AUC is at least {float(cfg['target_focal_auc']):g} twice in a row"
    return "; ".join(parts)


def _progress(config: dict, stage: str, force: bool = False) -> str:
    folder = Path(config["output_dir"]) / stage
    if force and folder.is_dir() and any(folder.iterdir()):
        return f"to run again from its start (--force): {folder}, its earlier result and checkpoints, is deleted first"
    if (folder / "DONE").is_file():
        return "done, skipped"
    steps = [int(p.name.split("-")[1]) for p in (folder / "checkpoints").glob("step-*")
             if (p / "trainer_state.json").is_file() and p.name.split("-")[1].isdigit()]
    if steps:
        return f"to run, resumes from step {max(steps)}"
    resume = stage_config(config, stage).get("resume_file") if stage == "vision" else None
    if resume and Path(resume).is_file():  # a run carried over from another machine
        import json

        from safetensors import safe_open

        with safe_open(str(resume), framework="numpy") as handle:  # the header only; no torch
            state = json.loads((handle.metadata() or {}).get("trainer_state", "{}"))
        if state.get("finished"):
            return (f"finished in its resume file {resume} (step {state.get('global_step', '?')}): "
                    f"its result is written from it, no step trained")
        return f"to run, resumes from step {state.get('global_step', '?')} of its resume file {resume}"
    return "to run"


def _reads(config: dict, stage: str, data: DataCheck, pending: set[str]) -> str:
    if stage == "vision":
        cfg = stage_config(config, "vision")  # its own cases, rendered once with their dense targets
        root = vision_cache_root(cfg.get("cache_dir"), config["output_dir"])
        rendered = all((root / split / "meta.json").is_file() for split in ("train", "test"))
        return (f"{int(cfg.get('train_cases', 2000)):,} {cfg.get('train_sampler', 'natural')} train + "
                f"{int(cfg.get('test_cases', 200)):,} test phantoms with dense targets in {root} "
                f"({'rendered' if rendered else 'rendered first'}; not data.root)")
    root = data_root(config, stage)
    if root.root in pending:
        return f"{root.root} ({root.spelled}, written first)"
    files = []
    for key, split in stage_reads(config, stage):
        path = str(Path(root.root) / str(config["data"].get(key)))
        count = data.inputs.counts.get((path, split if key == "cap_json" else None))
        if count is not None:
            files.append(f"{config['data'].get(key)} {split if key == 'cap_json' else ''} {count:,}".replace("  ", " "))
    return f"{root.root} ({root.spelled}): " + (", ".join(files) if files else "not readable (see checks)")


def _outputs(config: dict, stage: str) -> str:
    folder = Path(config["output_dir"]) / stage
    if stage == "merge":
        merge = config.get("merge", {})
        extra = [str(merge.get("output") or Path(config["output_dir"]) / "merged")]
        if merge.get("embedded_output"):
            extra.append(f"{merge['embedded_output']} (an embedded model folder, as the plugin ships it)")
        return f"{folder}/, " + ", ".join(extra)
    return f"{folder}/"


def render_plan(config: dict, stages: list[str], command: str, writes_data: bool,
                force: bool = False) -> tuple[str, list[str]]:
    """(the plan as text, the problems the checks found, one line each)."""
    name = config.get("name", "?")
    to_run = [s for s in stages if _progress(config, s, force) != "done, skipped"]
    pending = missing_roots(config, to_run) if writes_data else []
    lines = [f"plan: {command} (preset {name})", f"device: {device_line(config)}", "data:"]
    for root in pending:
        counts = counts_of(root.phantoms or {})
        lines.append(f"  {root.root} ({root.spelled}): missing; written first, "
                     + " + ".join(f"{n:,} {split}" for split, n in counts.items()) + " phantom cases, resumable")
    data = DataCheck(config)
    found: dict[str, list[str]] = {}  # one problem, the stages it stops
    pending_roots = {r.root for r in pending}
    for index, stage in enumerate(to_run):
        try:
            check_choices(config, stage)
            if data_root(config, stage).root not in pending_roots:
                data.check(stage, optional=stage == "eval")
            check_earlier(config, stage, set(to_run[:index]))
            check_weights(config, stage)
        except InputError as err:
            found.setdefault(str(err).split(": ", 1)[1], []).append(stage)
    problems = [f"{', '.join(stages_)}: {problem}" for problem, stages_ in found.items()]
    for (path, split), count in data.inputs.counts.items():
        checked = data.inputs.checked.get((path, split), 0)
        lines.append(f"  {path}{' ' + split if split else ''}: {count:,} entries ({checked} files checked)")
    if len(lines) == 3:
        lines.append("  none read from disk")
    lines.append("stages:")
    budget, unbounded = 0.0, []
    for number, stage in enumerate(stages, start=1):
        state = _progress(config, stage, force)
        lines.append(f"  {number}. {stage}: {state}")
        if state == "done, skipped":
            continue
        lines.append(f"     input: {_reads(config, stage, data, pending_roots)}")
        if stage in ("vision", "siglip", "lit", "projector", "finetune"):
            lines.append(f"     {schedule(config, stage, stage_samples(config, stage, data))}")
            budget += float(stage_config(config, stage).get("max_minutes") or 0)
            if not stage_config(config, stage).get("max_minutes"):
                unbounded.append(stage)
        elif stage_config(config, stage).get("max_minutes"):
            lines.append(f"     time budget {float(stage_config(config, stage)['max_minutes']):g} min")
            budget += float(stage_config(config, stage)["max_minutes"])
        if stage in ("siglip", "projector", "finetune") and stage_config(config, stage).get("from_scratch"):
            lines.append("     from_scratch: an earlier stage's missing result means random weights")
        if stage == "finetune" and stage_config(config, stage).get("init_from"):
            source = stage_config(config, stage)["init_from"]
            kind = {"result": "an earlier round's result", "embedded": "an embedded model folder"}.get(
                finetune_start(Path(source)), "not a result or model folder (see checks)")
            lines.append(f"     continues from {source} ({kind}): encoder, projector and adapter from there, "
                         "a fresh schedule")
        if stage in ("projector", "finetune") and stage_config(config, stage).get("lesion_share_weight"):
            lines.append(f"     auxiliary lesion-share loss on the projector at weight "
                         f"{float(stage_config(config, stage)['lesion_share_weight']):g} (training cases' findings)")
        if stage == "vision" and stage_config(config, "vision").get("init_from"):
            lines.append(f"     starts from {stage_config(config, 'vision')['init_from']} (its encoder and the heads of "
                         "the same shape), a fresh schedule")
        if stage == "vision" and stage_config(config, "vision").get("technique_weight"):
            lines.append(f"     technique target (region, phase, plane) at weight "
                         f"{float(stage_config(config, 'vision')['technique_weight']):g}")
        if stage == "lit":
            source = "the SigLIP stage's" if "siglip" in stages or not stage_config(config, "finetune").get("init_from") \
                else f"{stage_config(config, 'finetune')['init_from']}'s"
            lines.append(f"     locks {source} image tower (each volume embedded once); LoRA, projection, temperature "
                         "and bias of the text side learn")
        lines.append(f"     writes {_outputs(config, stage)}")
    if budget or unbounded:
        lines.append(f"time: {budget:g} min of stage budgets, plus data writing, model loading"
                     + (f" and {', '.join(unbounded)} (no budget: as long as its steps take)" if unbounded else ""))
    lines.append("checks: " + ("ok" if not problems else f"{len(problems)} problem(s):"))
    lines.extend(f"  {p}" for p in problems)
    return "\n".join(lines), problems
