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

`train` only wires the parts together, open_clip style: `train_step` (one batch forward and backward,
the optimizer step), `evaluate_and_log` (a learning-curve point) and `save_checkpoint`, with the
time-budget calibration and the stop checks beside them. Its clock is `training.clock`: a time budget
counts training, not evaluation or checkpoint writing, as in the experiments.
"""

from __future__ import annotations

import json
import contextlib
import math
import os
import shutil
import signal
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from .clock import TrainingClock

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


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches that each hold samples of one group (one task: reports, closed or open questions), in an
    order that depends only on (seed, epoch).

    A batch is padded to its longest sample. In a random mix of 100-token reports and 45-token
    questions most batches of 8 hold a report, so most tokens are padding; batches of one task are
    padded to their own length. The shuffled order of `EpochSampler` is walked once and every group's
    batch is sent as soon as it is full, so the tasks stay interleaved the way they are mixed; a
    group's last partial batch is dropped (as ``drop_last``).
    """

    def __init__(self, groups: Sequence[Any], batch_size: int, seed: int = 0):
        self.groups = list(groups)
        self.batch_size = int(batch_size)
        self.order = EpochSampler(len(self.groups), seed=seed)
        self.length = sum(count // self.batch_size for count in Counter(self.groups).values())

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        filling: dict[Any, list[int]] = {}
        for index in self.order:
            batch = filling.setdefault(self.groups[index], [])
            batch.append(index)
            if len(batch) == self.batch_size:
                yield batch
                filling[self.groups[index]] = []


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
    batch_by_task: bool = False  # one task per batch (`GroupedBatchSampler`); the dataset names the tasks

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


def native_bf16() -> bool:
    """Whether the device the accelerator will pick multiplies bf16 matrices natively."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(value: str) -> str:
    """``mixed_precision`` as the accelerator takes it. ``auto``: bf16 where the device multiplies bf16
    matrices natively (CUDA with bf16; a CPU with oneDNN bf16 support, i.e. AVX-512 BF16 or AMX),
    else fp32 ("no"): on a CPU without it, bf16 matrix products take a scalar fallback, about 50 times
    slower than fp32 (measured on an AVX2-only CPU: 0.59 s against 0.012 s for 1536x576 @ 576x576)."""
    native = native_bf16()
    if value == "auto":
        return "bf16" if native else "no"
    if value == "bf16" and not native and not torch.cuda.is_available():
        print("[train] warning: mixed_precision bf16 on a CPU without native bf16 matrix products "
              "(no AVX-512 BF16 or AMX): steps run many times slower than fp32; use auto or no")
    return value


def make_accelerator(cfg: LoopConfig, project_dir: Path) -> Accelerator:
    # `all` runs stages with different precision in one process; the process group (PartialState)
    # stays, only the per-stage state is rebuilt.
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
    return Accelerator(
        mixed_precision=resolve_precision(cfg.mixed_precision),
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


def _records(path: Path, step: int) -> list[tuple[str, dict]]:
    """The records of ``metrics.jsonl`` up to ``step`` as (line, record); broken lines dropped."""
    if not path.exists():
        return []
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line a kill cut short
        if isinstance(record, dict) and int(record.get("step", 0)) <= step:
            kept.append((line, record))
    return kept


def _trim_metrics(path: Path, step: int) -> None:
    """Keep the records up to ``step`` (a resumed run logs the later ones again) and drop broken lines."""
    if path.exists():
        write_atomic(path, "".join(f"{line}\n" for line, _ in _records(path, step)))


def _evaluations(path: Path, step: int) -> list[dict]:
    """The scores of every evaluation up to ``step``, oldest first: the learning curve a resumed run
    carries on (a target counted over evaluations in a row spans a stop and a resume)."""
    return [record["eval"] for _, record in _records(path, step) if isinstance(record.get("eval"), dict)]


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete checkpoint (one whose ``trainer_state.json`` is in place), or None."""
    candidates = [p for p in checkpoint_dir.glob("step-*") if (p / STATE_FILE).exists()]
    if not candidates:
        return None
    return max(candidates, key=lambda p: int(p.name.split("-")[1]))


@dataclass
class _Run:
    """What one call of `train` works with: the prepared objects, the state, the clock and the
    calibration of the time budget (``calibration``: training seconds and step where it started)."""

    name: str
    cfg: LoopConfig
    accelerator: Accelerator
    model: torch.nn.Module  # as `accelerator.prepare` wrapped it
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    schedule: WarmupCosine
    sampler: EpochSampler | GroupedBatchSampler
    loader: DataLoader
    dataset: Dataset
    output_dir: Path
    state: TrainState
    clock: TrainingClock = field(default_factory=TrainingClock)
    evaluations: list = field(default_factory=list)  # every evaluation's scores so far, resumes included
    progress: tqdm | None = None
    calibrated: bool = True
    calibration: tuple[float, int] | None = None

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / "metrics.jsonl"

    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def result(self) -> tuple[torch.nn.Module, TrainState, Accelerator]:
        return self.unwrapped(), self.state, self.accelerator


class _Averages:
    """Running means of the loss and the logs of `compute_loss` between two log lines."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, values: dict) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.count += 1

    def take(self) -> dict[str, float]:
        means = {key: value / self.count for key, value in self.sums.items()}
        self.sums, self.count = {}, 0
        return means


def _prepare(name: str, model, dataset, collate_fn, cfg: LoopConfig, output_dir: Path,
             accelerator: Accelerator | None, param_groups) -> _Run:
    """Data loader, AdamW, the warmup-cosine schedule sized from epochs and max_steps, all prepared by
    `accelerate`, with checkpoints that keep only the trainable weights."""
    output_dir.mkdir(parents=True, exist_ok=True)
    accelerator = accelerator or make_accelerator(cfg, output_dir)
    set_seed(cfg.seed)
    if cfg.batch_by_task:
        if not hasattr(dataset, "task_of_each_sample"):
            raise ValueError(f"[{name}] batch_by_task needs a dataset that names each sample's task")
        sampler = GroupedBatchSampler(dataset.task_of_each_sample(), cfg.batch_size, seed=cfg.seed)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=cfg.num_workers)
    else:
        sampler = EpochSampler(len(dataset), seed=cfg.seed)
        loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate_fn,
                            num_workers=cfg.num_workers, drop_last=True)
    if param_groups is None:
        param_groups = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    batches_per_epoch = len(loader) // accelerator.num_processes
    steps_per_epoch = max(1, batches_per_epoch // cfg.gradient_accumulation_steps)
    total_steps = math.ceil(cfg.epochs * steps_per_epoch)
    if cfg.max_steps:
        total_steps = min(total_steps, int(cfg.max_steps))
    schedule = WarmupCosine(int(round(cfg.warmup_ratio * total_steps)), total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accelerator.register_for_checkpointing(scheduler)
    accelerator.register_save_state_pre_hook(
        lambda models, weights, _dir: weights.__setitem__(
            slice(None),
            [trainable_state_dict(accelerator.unwrap_model(m), w) for m, w in zip(models, weights)],
        )
    )
    return _Run(name=name, cfg=cfg, accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler,
                schedule=schedule, sampler=sampler, loader=loader, dataset=dataset, output_dir=output_dir,
                state=TrainState(total_steps=total_steps))


def _restore(run: _Run, resume_file: Path | None, recipe: dict | None) -> bool:
    """Continue from the newest complete checkpoint, else from ``resume_file``; True when the resume
    file was unpacked (it then becomes the first checkpoint)."""
    accelerator = run.accelerator
    resume_from = latest_checkpoint(run.checkpoint_dir)
    if resume_from is not None:
        accelerator.load_state(str(resume_from), strict=False)
        run.state = TrainState(**json.loads((resume_from / STATE_FILE).read_text()))
        run.schedule.total_steps = run.state.total_steps
        accelerator.print(f"[{run.name}] resumed from {resume_from.name} (step {run.state.global_step})")
        return False
    if resume_file is None:
        return False
    from .resume_file import unpack

    values, curve = unpack(resume_file, run.unwrapped(), run.optimizer, run.scheduler, recipe)
    run.state = TrainState(**values)
    run.schedule.total_steps = run.state.total_steps
    if accelerator.is_main_process:  # lines left by a run without a checkpoint belong to no run now
        write_atomic(run.metrics_path, "".join(json.dumps(record) + "\n" for record in curve))
    accelerator.print(f"[{run.name}] resumed from {resume_file} (step {run.state.global_step})")
    return True


def save_checkpoint(run: _Run) -> None:
    """Write ``checkpoints/step-N`` (it counts once its ``trainer_state.json`` is in place) and drop all
    but the newest ``keep_checkpoints``; the clock stands still meanwhile."""
    accelerator, state = run.accelerator, run.state
    with run.clock.paused():
        state.elapsed_s = run.clock.elapsed()
        target = run.checkpoint_dir / f"step-{state.global_step}"
        accelerator.wait_for_everyone()
        accelerator.save_state(str(target))
        if accelerator.is_main_process:
            write_atomic(target / STATE_FILE, json.dumps(state.__dict__))  # last: the checkpoint now counts
            old = sorted(run.checkpoint_dir.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
            for stale in old[: -run.cfg.keep_checkpoints]:
                (stale / STATE_FILE).unlink(missing_ok=True)  # first: a half-deleted one never counts
                shutil.rmtree(stale, ignore_errors=True)
        accelerator.wait_for_everyone()


def train_step(run: _Run, batch, compute_loss: Callable) -> dict:
    """One batch forward and backward, and the optimizer step when the accumulation window closes
    (``accelerator.sync_gradients``). Returns the batch's loss and the logs of ``compute_loss``."""
    cfg, accelerator, model = run.cfg, run.accelerator, run.model
    if run.state.batches_in_epoch % cfg.gradient_accumulation_steps == 0:
        # Dropout and any other global-RNG use depend on the step alone.
        torch.manual_seed(cfg.seed * 1_000_003 + run.state.global_step)
    with accelerator.accumulate(model):
        with accelerator.autocast():
            loss, logs = compute_loss(model, batch)
        accelerator.backward(loss)
        if accelerator.sync_gradients and cfg.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    run.state.batches_in_epoch += 1
    return {"loss": loss.detach().float().item(), **logs}


def _calibrate(run: _Run) -> None:
    """With a time budget, fit the cosine schedule to it once ``calibrate_steps`` steps of this session
    are measured (from the end of its first, slow step)."""
    cfg, state = run.cfg, run.state
    if run.calibrated:
        return
    if run.calibration is None:
        run.calibration = (run.clock.elapsed(), state.global_step)
    start_s, start_step = run.calibration
    if state.global_step - start_step < cfg.calibrate_steps:
        return
    per_step = (run.clock.elapsed() - start_s) / (state.global_step - start_step)
    left = cfg.max_minutes * 60.0 - run.clock.elapsed()
    fit = state.global_step + int(0.95 * left / max(per_step, 1e-6))
    new_total = [max(state.global_step + 1, min(state.total_steps, fit))]
    broadcast_object_list(new_total)
    if new_total[0] != state.total_steps:
        run.accelerator.print(f"[{run.name}] {per_step:.2f} s/step: schedule {state.total_steps} -> {new_total[0]} steps")
    state.total_steps = run.schedule.total_steps = new_total[0]
    run.schedule.warmup_steps = min(run.schedule.warmup_steps, int(round(cfg.warmup_ratio * new_total[0])))
    run.progress.total = state.total_steps
    run.calibrated = True


def _append_metrics(run: _Run, record: dict) -> None:
    with open(run.metrics_path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _log(run: _Run, means: dict[str, float]) -> None:
    """One ``metrics.jsonl`` line: step, epoch, learning rate, training seconds, mean loss and logs."""
    state = run.state
    record = {"stage": run.name, "step": state.global_step, "epoch": state.epoch,
              "lr": run.scheduler.get_last_lr()[0], "elapsed_s": round(run.clock.elapsed(), 2), **means}
    run.progress.set_postfix(loss=f"{record['loss']:.4f}")
    if run.accelerator.is_main_process:
        _append_metrics(run, record)


def evaluate_and_log(run: _Run, evaluate: Callable[[torch.nn.Module], dict]) -> dict:
    """A learning-curve point: ``evaluate(model)`` into ``metrics.jsonl`` as an ``eval`` record, off the
    training clock, the model back in training mode after."""
    state, cfg = run.state, run.cfg
    with run.clock.paused():
        scores = evaluate(run.unwrapped())
        run.model.train()
        if run.accelerator.is_main_process:
            _append_metrics(run, {"stage": run.name, "step": state.global_step, "elapsed_s": round(run.clock.elapsed(), 2),
                                  "samples_seen": state.global_step * cfg.batch_size * cfg.gradient_accumulation_steps,
                                  "eval": scores})
            run.accelerator.print(f"[{run.name}] step {state.global_step}: {json.dumps(scores)}")
    return scores


def _after_step(run: _Run, averages: _Averages, evaluate, evaluate_every: int, requested: list[int],
                stop_when=None) -> str | None:
    """Everything an optimizer step sets off: schedule, calibration, log line, evaluation, checkpoint
    and the stop checks. Returns "cut" (``stop_after_steps``), "budget" (time budget used up), "target"
    (``stop_when`` said the scores are good enough) or None; raises `TrainingStopped` after a signal."""
    cfg, state = run.cfg, run.state
    run.scheduler.step()
    state.global_step += 1
    run.progress.update(1)
    _calibrate(run)
    if state.global_step % cfg.log_every == 0 or state.global_step == state.total_steps:
        _log(run, averages.take())
    target = False
    if evaluate is not None and evaluate_every and state.global_step % evaluate_every == 0:
        run.evaluations.append(evaluate_and_log(run, evaluate))
        target = [bool(stop_when is not None and stop_when(run.evaluations))]
        broadcast_object_list(target)  # every process stops at the same step
        target = target[0]
    if state.global_step % cfg.save_every == 0:
        save_checkpoint(run)
    if cfg.stop_after_steps is not None and state.global_step >= cfg.stop_after_steps:
        return "cut"
    flags = [run.clock.over(cfg.max_minutes), requested[0] if requested else 0]
    broadcast_object_list(flags)
    if flags[1] and state.global_step < state.total_steps:
        if state.global_step % cfg.save_every:
            save_checkpoint(run)
        run.progress.close()
        raise TrainingStopped(run.name, state.global_step, flags[1])
    if flags[0]:
        run.accelerator.print(f"[{run.name}] time budget of {cfg.max_minutes} min reached")
        return "budget"
    if target:
        run.accelerator.print(f"[{run.name}] target scores reached at step {state.global_step}")
        return "target"
    return None


def _epoch_batches(run: _Run, on_epoch_start: Callable[[int], None] | None):
    """The current epoch's batches: the epoch set wherever order or augmentation depends on it, and the
    batches a resumed run already consumed skipped."""
    epoch = run.state.epoch
    run.sampler.set_epoch(epoch)
    if hasattr(run.loader, "set_epoch"):
        run.loader.set_epoch(epoch)
    if hasattr(run.dataset, "set_epoch"):
        run.dataset.set_epoch(epoch)  # caption templates and augmentation depend on the epoch
    if on_epoch_start is not None:
        on_epoch_start(epoch)
    if run.state.batches_in_epoch:
        return run.accelerator.skip_first_batches(run.loader, run.state.batches_in_epoch)
    return run.loader


def _run_epochs(run: _Run, compute_loss, on_epoch_start, evaluate, evaluate_every: int, requested: list[int],
                stop_when=None) -> bool:
    """Train until the schedule ends or the time budget is used up; False when ``stop_after_steps``
    cut the run short (a testing aid: as if killed)."""
    state, averages, stop = run.state, _Averages(), False
    while not stop and state.global_step < state.total_steps:
        for batch in _epoch_batches(run, on_epoch_start):
            averages.add(train_step(run, batch, compute_loss))
            if not run.accelerator.sync_gradients:
                continue
            outcome = _after_step(run, averages, evaluate, evaluate_every, requested, stop_when)
            if outcome == "cut":
                return False
            stop = outcome in ("budget", "target")
            if stop or state.global_step >= state.total_steps:
                break
        else:
            state.epoch += 1
            state.batches_in_epoch = 0
    return True


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
    stop_when: Callable[[list[dict]], bool] | None = None,
) -> tuple[torch.nn.Module, TrainState, Accelerator]:
    """Train ``model`` on ``dataset`` until epochs, max_steps or max_minutes run out.

    Resumes from the newest ``output_dir/checkpoints/step-*`` when there is one. Returns the unwrapped
    model, the final state and the accelerator (the caller saves the stage's result).

    ``evaluate(model)``, called every ``evaluate_every`` optimizer steps, returns scores that go into
    ``metrics.jsonl`` as a learning curve (it must not touch the global RNG or the weights). Its time,
    like checkpoint writing, does not count towards ``max_minutes`` (`training.clock`).

    ``resume_file``: when there is no checkpoint yet, start from this resume file instead (checked
    against ``recipe``), writing it out as the first checkpoint and its learning curve as the first
    records of ``metrics.jsonl``. Raises `TrainingStopped` after a SIGTERM or SIGINT (checkpoint saved).

    ``stop_when(evaluations)``, asked after each evaluation with the scores of every evaluation so far
    (oldest first, those before a resume included), ends the run early (finished, as when the schedule
    ends) when it returns True: a target score instead of the remaining steps.
    """
    run = _prepare(name, model, dataset, collate_fn, cfg, Path(output_dir), accelerator, param_groups)
    unpacked = _restore(run, resume_file, recipe)
    if run.state.finished:
        return run.result()
    if run.accelerator.is_main_process:
        _trim_metrics(run.metrics_path, run.state.global_step)
    run.evaluations = _evaluations(run.metrics_path, run.state.global_step)
    run.calibrated = cfg.max_minutes is None or run.state.global_step >= cfg.calibrate_steps
    run.clock = TrainingClock(before=run.state.elapsed_s)
    if unpacked:
        save_checkpoint(run)  # the resume file, unpacked: from now on the run resumes from its checkpoints
    with stop_requests() as requested:
        run.model.train()
        run.progress = tqdm(total=run.state.total_steps, initial=run.state.global_step, desc=name,
                            disable=not run.accelerator.is_local_main_process, dynamic_ncols=True)
        completed = _run_epochs(run, compute_loss, on_epoch_start, evaluate, evaluate_every, requested, stop_when)
        run.progress.close()
        if completed:
            run.state.finished = True
            save_checkpoint(run)
        return run.result()
