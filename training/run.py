"""``python -m training.run STAGE --preset NAME [key=value ...]``

Stages: vision (demo presets), siglip, lit (demo presets), projector, finetune, merge, eval, or all (in that
order). Each stage writes into ``<output_dir>/<stage>/`` and is resumable: run the same command again
after an interruption and it continues from the last checkpoint; a finished stage is skipped by ``all``. Multi-GPU:
``accelerate launch -m training.run STAGE --preset paper``.

Before any model is loaded every stage checks its inputs (`training.checks`): a missing data file or
earlier stage stops the command with one line and exit status 2, as does a bad override. ``all``
writes a demo preset's phantom split when it is missing (`training.phantom_split`); ``--dry-run``
prints the plan (`training.plan`) and trains nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .config import STAGES, ConfigError, apply_overrides, available_presets, load_preset, stages_of


def _stage_runner(stage: str):
    """The stage's ``run``; only that stage's module is imported (peft, for one, only for finetune)."""
    import importlib

    if stage not in STAGES:
        raise KeyError(stage)
    return importlib.import_module(f".stages.{stage}", __package__).run


def stage_dir(config: dict, stage: str) -> Path:
    return Path(config["output_dir"]) / stage


def run_stage(config: dict, stage: str, force: bool = False) -> dict:
    """Run one stage unless it already finished; returns its summary (also written to DONE). ``force``
    runs it again from its start: its folder (result, checkpoints, log) is deleted first, because a
    checkpoint left there would be resumed with weights trained from another start."""
    done = stage_dir(config, stage) / "DONE"
    if force and stage_dir(config, stage).exists():
        import shutil

        shutil.rmtree(stage_dir(config, stage))
    if done.exists() and not force:
        print(f"[{stage}] already done ({done}); skipping")
        return json.loads(done.read_text() or "{}")
    from .checks import check_stages

    check_stages(config, [stage])  # raises InputError before any model is built
    stage_dir(config, stage).mkdir(parents=True, exist_ok=True)
    from accelerate.utils import set_seed

    set_seed(int(config.get("train", {}).get("seed", 42)))  # fresh weights are identical on resume
    start = time.time()
    summary = _stage_runner(stage)(config) or {}
    summary.setdefault("wall_s", round(time.time() - start, 1))
    if _is_main_process():
        from .loop import write_atomic

        write_atomic(done, json.dumps(summary, indent=2))
    return summary


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr, exit status 2 (argparse prints the usage block too)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _Parser(prog="python -m training.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=[*STAGES, "all"])
    parser.add_argument("--preset", default="demo", help=f"one of {available_presets()} or a YAML path")
    parser.add_argument("--force", action="store_true",
                        help="run the stages again from their start: their earlier results and checkpoints are deleted")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (stages, data, steps, budgets, outputs, device) and the checks; train nothing")
    parser.add_argument("--data", metavar="DIR",
                        help="read existing M3D-format data from DIR (sets data.root; it is never written)")
    parser.add_argument("--from-scratch", action="store_true",
                        help="start from random weights where an earlier stage's result is missing (else: an error)")
    parser.add_argument("--export-resume", nargs="?", const="", default=None, metavar="FILE",
                        help="vision only: pack the stage's newest checkpoint into FILE (default: the preset's "
                             "vision.resume_file) instead of training")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. finetune.max_steps=10")
    # Intermixed: overrides may follow --preset, as in the documented command lines.
    return parser.parse_intermixed_args(argv)


def build_config(args: argparse.Namespace) -> dict:
    """The preset with the overrides, ``--data`` and ``--from-scratch`` applied (ConfigError if bad)."""
    config = apply_overrides(load_preset(args.preset), args.overrides)
    if args.data:
        if not Path(args.data).is_dir():
            raise ConfigError(f"--data {args.data}: no such folder")
        config["data"]["root"] = args.data
        config["data"].pop("phantoms", None)  # the user's data: checked, never written
    if args.from_scratch:
        config.setdefault("train", {})["from_scratch"] = True
    return config


def _command_line(args: argparse.Namespace) -> str:
    extra = [f"--data {args.data}"] if args.data else []
    extra += ["--from-scratch"] if args.from_scratch else []
    return " ".join(["python -m training.run", args.stage, "--preset", str(args.preset), *extra, *args.overrides])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _main(args)
    except ConfigError as err:  # a user error: one line, no traceback
        print(f"python -m training.run: error: {err}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    config = build_config(args)
    if args.export_resume is not None:
        return _export_resume(config, args.stage, args.export_resume)
    stages = stages_of(config) if args.stage == "all" else [args.stage]
    writes_data = args.stage == "all"
    if args.dry_run:
        from .plan import render_plan

        text, problems = render_plan(config, stages, _command_line(args), writes_data, force=args.force)
        print(text)
        if problems:
            print(f"python -m training.run: error: {problems[0]}", file=sys.stderr)
            return 2
        return 0

    from .checks import check_stages
    from .phantom_split import missing_roots, write_phantom_split

    to_run = [s for s in stages if args.force or not (stage_dir(config, s) / "DONE").exists()]
    if args.force and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        present = [str(stage_dir(config, s)) for s in to_run if stage_dir(config, s).exists()]
        if present:  # every process would delete it at once, while the others look for checkpoints
            raise ConfigError(f"--force under `accelerate launch` would delete {present[0]} in every process: "
                              "delete it first, then launch without --force")
    pending = missing_roots(config, to_run) if writes_data else []
    check_stages(config, to_run, {root.root for root in pending})  # all of them, before any model is loaded
    if pending and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from .checks import split_command

        raise ConfigError(f"{pending[0].root} is missing: write it once, outside `accelerate launch`, with "
                          f"`{split_command(pending[0], config)}`")  # not once per process
    for root in pending:
        write_phantom_split(config, root)
    threads = config.get("train", {}).get("num_threads")
    if threads:
        # On a shared CPU one thread per process is far faster than two that wait on each other.
        import torch

        torch.set_num_threads(int(threads))
    from .loop import TrainingStopped

    for stage in stages:
        try:
            summary = run_stage(config, stage, force=args.force)
        except TrainingStopped as stopped:  # SIGTERM / SIGINT: a checkpoint is saved, no DONE
            print(stopped, file=sys.stderr)
            return 0
        print(f"[{stage}] {json.dumps(summary)}")
    return 0


def _export_resume(config: dict, stage: str, path: str) -> int:
    """``--export-resume``: the vision stage's newest checkpoint as one resume file (training.resume_file)."""
    from .resume_file import ResumeFileError
    from .stages.vision import export_resume
    from .vision.config import VisionConfigError

    try:
        if stage != "vision":
            raise ResumeFileError(f"only the vision stage writes a resume file, not {stage!r}")
        out = export_resume(config, path or None)
    except (ResumeFileError, VisionConfigError) as err:
        print(f"python -m training.run: error: --export-resume: {err}", file=sys.stderr)
        return 2
    print(f"[vision] resume file {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
