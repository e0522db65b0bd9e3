"""One resumable training loop on `accelerate`, shared by every stage.

Why a small loop of our own rather than the HF Trainer: the stages train odd subsets (a projector, one
embedding row, LoRA adapters), must fit a wall-clock budget on a laptop CPU and must resume *exactly*
after a kill. Exact resume rests on three things:

* the data order is a pure function of (seed, epoch) (`EpochSampler`) and resume skips the batches
  already consumed in the current epoch with `accelerator.skip_first_batches`;
* random augmentations draw from a generator seeded by (seed, epoch, index), never the global RNG;
* the global RNG is re-seeded from (seed, step) before every optimizer step (dropout and friends).

Checkpoints (`accelerator.save_state`) hold only the trainable parameters and buffers, so that a frozen
LLM is not rewritten every few hundred steps. A kill at any moment leaves a usable state: a checkpoint
counts only once its ``trainer_state.json`` is in place (written to a temporary file and renamed, after
everything else), a stale checkpoint loses that file before the rest, and a resumed run drops the
``metrics.jsonl`` records of the steps it is about to redo (and a half-written last line).

A long run stops cleanly on SIGTERM or SIGINT: the signal only sets a flag, the loop finishes the
step under way, saves a checkpoint and raises `TrainingStopped` (a second signal acts at once). A
stage's checkpoint can also start from a resume file (`training.resume_file`): one safetensors file
that carries a run to another machine.
"""

from __future__ import annotations

import json
import contextlib
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

STATE_FILE = "trainer_state.json"


class TrainingStopped(Exception):
    """A stop was asked for (SIGTERM, SIGINT) and the loop saved a checkpoint at ``step``: run the same
    command again to continue."""

    def __init__(self, name: str, step: int, signum: int):
        self.name, self.step, self.signum = name, step, signum
        super().__init__(f"[{name}] stopped by {signal.Signals(signum).name} at step {step}; checkpoint saved, "
                         "run the same command to continue")


@contextlib.contextmanager
def stop_requests():
    """Within the block SIGTERM and SIGINT only append to the yielded list (the loop checks it after each
    step); a second signal restores the previous handlers and acts at once. Outside the main thread
    (where handlers cannot be set) the list stays empty."""
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {}

    def handler(signum, _frame):
        if requested:  # asked twice: stop now
            for sig, old in previous.items():
                signal.signal(sig, old)
            signal.raise_signal(signum)
            return
        requested.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class EpochSampler(Sampler[int]):
    """A shuffled order that depends only on (seed, epoch), so a resumed run sees the same order."""

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True):
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.length))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())


class WarmupCosine:
    """Linear warmup then cosine decay to 0, as a LambdaLR factor.

    A callable object (not a closure) so that LambdaLR's state_dict stores ``total_steps``: the
    time-budget calibration changes it, and a resumed run must use the calibrated value.
    """

    def __init__(self, warmup_steps: int, total_steps: int):
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / max(1, self.warmup_steps)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class LoopConfig:
    """The knobs every stage shares (the ``train`` section of a preset plus the stage's own)."""

    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"
    seed: int = 42
    save_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    max_minutes: float | None = None
    calibrate_steps: int = 10
    num_workers: int = 0
    stop_after_steps: int | None = None  # testing aid: behave as if killed after this many steps

    @classmethod
    def from_dict(cls, values: dict) -> "LoopConfig":
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in values.items() if k in known}
        if values.get("mixed_precision") in (False, None):
            values["mixed_precision"] = "no"  # YAML reads a bare `no` as false
        return cls(**values)


@dataclass
class TrainState:
    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    elapsed_s: float = 0.0
    total_steps: int = 0
    finished: bool = False
    history: list = field(default_factory=list)


def make_accelerator(cfg: LoopConfig, project_dir: Path) -> Accelerator:
    # `all` runs stages with different precision in one process; the process group (PartialState)
    # stays, only the per-stage state is rebuilt.
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
    return Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        project_dir=str(project_dir),
        step_scheduler_with_optimizer=False,
    )


def trainable_state_dict(model: torch.nn.Module, state_dict: dict) -> dict:
    """Keep trainable parameters and every buffer (BatchNorm statistics); drop frozen weights."""
    params = dict(model.named_parameters())
    keep = {}
    for key, value in state_dict.items():
        param = params.get(key)
        if param is None or param.requires_grad:
            keep[key] = value
    return keep


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` so that a reader (or a resumed run) sees the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _trim_metrics(path: Path, step: int) -> None:
    """Keep the records up to ``step`` (a resumed run logs the later ones again) and drop broken lines."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line a kill cut short
        if isinstance(record, dict) and int(record.get("step", 0)) <= step:
            kept.append(line)
    write_atomic(path, "".join(f"{line}\n" for line in kept))


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete checkpoint (one whose ``trainer_state.json`` is in place), or None."""
    candidates = [p for p in checkpoint_dir.glob("step-*") if (p / STATE_FILE).exists()]
    if not candidates:
        return None
    return max(candidates, key=lambda p: int(p.name.split("-")[1]))


def train(
    *,
    name: str,
    model: torch.nn.Module,
    dataset: Dataset,
    collate_fn: Callable,
    compute_loss: Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict]],
    cfg: LoopConfig,
    output_dir: Path,
    accelerator: Accelerator | None = None,
    param_groups: Iterable | None = None,
    on_epoch_start: Callable[[int], None] | None = None,
    evaluate: Callable[[torch.nn.Module], dict] | None = None,
    evaluate_every: int = 0,
    resume_file: Path | None = None,
    recipe: dict | None = None,
) -> tuple[torch.nn.Module, TrainState, Accelerator]:
    """Train ``model`` on ``dataset`` until epochs, max_steps or max_minutes run out.

    Resumes from the newest ``output_dir/checkpoints/step-*`` when there is one. Returns the unwrapped
    model, the final state and the accelerator (the caller saves the stage's result).

    ``evaluate(model)``, called every ``evaluate_every`` optimizer steps, returns scores that go into
    ``metrics.jsonl`` as a learning curve (it must not touch the global RNG or the weights).

    ``resume_file``: when there is no checkpoint yet, start from this resume file instead (checked
    against ``recipe``), writing it out as the first checkpoint and its learning curve as the first
    records of ``metrics.jsonl``. Raises `TrainingStopped` after a SIGTERM or SIGINT (checkpoint saved).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = output_dir / "checkpoints"
    accelerator = accelerator or make_accelerator(cfg, output_dir)
    set_seed(cfg.seed)

    sampler = EpochSampler(len(dataset), seed=cfg.seed)
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=cfg.num_workers,
        drop_last=True,
    )
    if param_groups is None:
        param_groups = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    batches_per_epoch = len(loader) // accelerator.num_processes
    steps_per_epoch = max(1, batches_per_epoch // cfg.gradient_accumulation_steps)
    total_steps = math.ceil(cfg.epochs * steps_per_epoch)
    if cfg.max_steps:
        total_steps = min(total_steps, int(cfg.max_steps))
    warmup = int(round(cfg.warmup_ratio * total_steps))
    schedule = WarmupCosine(warmup, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accelerator.register_for_checkpointing(scheduler)
    accelerator.register_save_state_pre_hook(
        lambda models, weights, _dir: weights.__setitem__(
            slice(None),
            [trainable_state_dict(accelerator.unwrap_model(m), w) for m, w in zip(models, weights)],
        )
    )

    state = TrainState(total_steps=total_steps)
    resume_from = latest_checkpoint(checkpoint_dir)
    unpacked = False
    metrics_path = output_dir / "metrics.jsonl"
    if resume_from is not None:
        accelerator.load_state(str(resume_from), strict=False)
        state = TrainState(**json.loads((resume_from / STATE_FILE).read_text()))
        schedule.total_steps = state.total_steps
        accelerator.print(f"[{name}] resumed from {resume_from.name} (step {state.global_step})")
    elif resume_file is not None:
        from .resume_file import unpack

        values, curve = unpack(resume_file, accelerator.unwrap_model(model), optimizer, scheduler, recipe)
        state = TrainState(**values)
        schedule.total_steps = state.total_steps
        unpacked = True
        if accelerator.is_main_process:  # lines left by a run without a checkpoint belong to no run now
            write_atomic(metrics_path, "".join(json.dumps(record) + "\n" for record in curve))
        accelerator.print(f"[{name}] resumed from {resume_file} (step {state.global_step})")
    if state.finished:
        return accelerator.unwrap_model(model), state, accelerator

    if accelerator.is_main_process:
        _trim_metrics(metrics_path, state.global_step)
    calibrated = cfg.max_minutes is None or state.global_step >= cfg.calibrate_steps
    session_start = time.monotonic()
    elapsed_before = state.elapsed_s
    calib_start = None

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - session_start

    def save_checkpoint() -> None:
        state.elapsed_s = elapsed()
        target = checkpoint_dir / f"step-{state.global_step}"
        accelerator.wait_for_everyone()
        accelerator.save_state(str(target))
        if accelerator.is_main_process:
            write_atomic(target / STATE_FILE, json.dumps(state.__dict__))  # last: the checkpoint now counts
            old = sorted(checkpoint_dir.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
            for stale in old[: -cfg.keep_checkpoints]:
                (stale / STATE_FILE).unlink(missing_ok=True)  # first: a half-deleted one never counts
                shutil.rmtree(stale, ignore_errors=True)
        accelerator.wait_for_everyone()

    if unpacked:
        save_checkpoint()  # the resume file, unpacked: from now on the run resumes from its checkpoints
    with stop_requests() as requested:
        model.train()
        progress = tqdm(
            total=state.total_steps,
            initial=state.global_step,
            desc=name,
            disable=not accelerator.is_local_main_process,
            dynamic_ncols=True,
        )
        running: dict[str, float] = {}
        running_count = 0
        stop = False
        while not stop and state.global_step < state.total_steps:
            sampler.set_epoch(state.epoch)
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(state.epoch)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(state.epoch)  # caption templates and augmentation depend on the epoch
            if on_epoch_start is not None:
                on_epoch_start(state.epoch)
            epoch_loader = loader
            if state.batches_in_epoch:
                epoch_loader = accelerator.skip_first_batches(loader, state.batches_in_epoch)
            for batch in epoch_loader:
                if state.batches_in_epoch % cfg.gradient_accumulation_steps == 0:
                    # Dropout and any other global-RNG use depend on the step alone.
                    torch.manual_seed(cfg.seed * 1_000_003 + state.global_step)
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        loss, logs = compute_loss(model, batch)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                state.batches_in_epoch += 1
                for key, value in {"loss": loss.detach().float().item(), **logs}.items():
                    running[key] = running.get(key, 0.0) + float(value)
                running_count += 1
                if not accelerator.sync_gradients:
                    continue

                scheduler.step()
                state.global_step += 1
                progress.update(1)
                if not calibrated and calib_start is None:
                    calib_start = (time.monotonic(), state.global_step)
                if not calibrated and calib_start and state.global_step - calib_start[1] >= cfg.calibrate_steps:
                    # Fit the cosine schedule to the time budget, measured after the first (slow) step.
                    per_step = (time.monotonic() - calib_start[0]) / (state.global_step - calib_start[1])
                    left = cfg.max_minutes * 60.0 - elapsed()
                    fit = state.global_step + int(0.95 * left / max(per_step, 1e-6))
                    new_total = [max(state.global_step + 1, min(state.total_steps, fit))]
                    broadcast_object_list(new_total)
                    if new_total[0] != state.total_steps:
                        accelerator.print(
                            f"[{name}] {per_step:.2f} s/step: schedule {state.total_steps} -> {new_total[0]} steps"
                        )
                    state.total_steps = schedule.total_steps = new_total[0]
                    schedule.warmup_steps = min(schedule.warmup_steps, int(round(cfg.warmup_ratio * new_total[0])))
                    progress.total = state.total_steps
                    calibrated = True

                if state.global_step % cfg.log_every == 0 or state.global_step == state.total_steps:
                    record = {
                        "stage": name,
                        "step": state.global_step,
                        "epoch": state.epoch,
                        "lr": scheduler.get_last_lr()[0],
                        "elapsed_s": round(elapsed(), 2),
                        **{k: v / running_count for k, v in running.items()},
                    }
                    running, running_count = {}, 0
                    progress.set_postfix(loss=f"{record['loss']:.4f}")
                    if accelerator.is_main_process:
                        with open(metrics_path, "a", encoding="utf-8") as handle:
                            handle.write(json.dumps(record) + "\n")
                if evaluate is not None and evaluate_every and state.global_step % evaluate_every == 0:
                    scores = evaluate(accelerator.unwrap_model(model))
                    model.train()
                    if accelerator.is_main_process:
                        record = {"stage": name, "step": state.global_step, "elapsed_s": round(elapsed(), 2),
                                  "samples_seen": state.global_step * cfg.batch_size * cfg.gradient_accumulation_steps,
                                  "eval": scores}
                        with open(metrics_path, "a", encoding="utf-8") as handle:
                            handle.write(json.dumps(record) + "\n")
                        accelerator.print(f"[{name}] step {state.global_step}: {json.dumps(scores)}")
                if state.global_step % cfg.save_every == 0:
                    save_checkpoint()
                if cfg.stop_after_steps is not None and state.global_step >= cfg.stop_after_steps:
                    progress.close()
                    return accelerator.unwrap_model(model), state, accelerator
                over_budget = cfg.max_minutes is not None and elapsed() > cfg.max_minutes * 60.0
                flags = [over_budget, requested[0] if requested else 0]
                broadcast_object_list(flags)
                if flags[1] and state.global_step < state.total_steps:
                    if state.global_step % cfg.save_every:
                        save_checkpoint()
                    progress.close()
                    raise TrainingStopped(name, state.global_step, flags[1])
                if flags[0]:
                    accelerator.print(f"[{name}] time budget of {cfg.max_minutes} min reached")
                    stop = True
                if stop or state.global_step >= state.total_steps:
                    break
            else:
                state.epoch += 1
                state.batches_in_epoch = 0

        progress.close()
        state.finished = True
        save_checkpoint()
        return accelerator.unwrap_model(model), state, accelerator
