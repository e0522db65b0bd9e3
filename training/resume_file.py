"""A training checkpoint as one safetensors file: what a long run needs to continue on another machine.

An `accelerate` checkpoint (``<stage>/checkpoints/step-N/``) is a folder of pickles and safetensors
tied to one output folder. A long run that moves between sessions and machines needs one small file
that can live in the repository and be loaded without unpickling anything:

* tensors: the model's saved weights (``model/<key>``) and the AdamW state of every trainable
  parameter by name (``optimizer/<param>/exp_avg``, ``exp_avg_sq``, ``step``);
* metadata (JSON strings): the optimizer's parameter groups and parameter order, the learning-rate
  scheduler's state, the trainer state (step, epoch, batches consumed in the epoch, training seconds,
  the schedule's length), the stage's recipe (data, model and batch settings that must not change
  under a resumed run) and the learning curve (the ``eval`` records of ``metrics.jsonl``).

The RNG states are left out on purpose: the loop re-seeds the global RNG from (seed, step) before every
step and the data order is a function of (seed, epoch), so a run continued from the file takes exactly
the steps an uninterrupted run would (tests/training/test_resume_file.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

FORMAT = "napari-med3dvlm-resume/1"
STATE_FILE = "trainer_state.json"  # as training.loop writes it
MODEL_FILE = "model.safetensors"  # accelerate's name for the first prepared model
OPTIMIZER_FILE = "optimizer.bin"
SCHEDULER_FILE = "custom_checkpoint_0.pkl"  # the scheduler, registered for checkpointing


class ResumeFileError(ValueError):
    """A resume file that cannot be written or does not fit the run that would load it (one line)."""


def learning_curve(metrics_path: Path, up_to_step: int) -> list[dict]:
    """The ``eval`` records of ``metrics.jsonl`` up to ``up_to_step`` (a line cut short is skipped)."""
    records = []
    if not Path(metrics_path).exists():
        return records
    for line in Path(metrics_path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "eval" in record and int(record.get("step", 0)) <= up_to_step:
            records.append(record)
    return records


def pack(checkpoint: Path, out: Path, param_names: list[str], metrics_path: Path | None = None,
         recipe: dict | None = None) -> Path:
    """Write the resume file of an `accelerate` checkpoint folder written by `training.loop`.

    ``param_names``: the trainable parameters in the optimizer's order (``named_parameters`` of the
    model, those that require grad). The checkpoint's optimizer and scheduler files are read with
    ``torch.load(weights_only=True)`` (tensors and plain values only); the file written is
    safetensors with JSON metadata."""
    checkpoint, out = Path(checkpoint), Path(out)
    if not (checkpoint / STATE_FILE).exists():
        raise ResumeFileError(f"{checkpoint} is not a complete checkpoint (no {STATE_FILE})")
    trainer = json.loads((checkpoint / STATE_FILE).read_text())
    weights = load_file(str(checkpoint / MODEL_FILE))
    optimizer = torch.load(checkpoint / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    scheduler = torch.load(checkpoint / SCHEDULER_FILE, map_location="cpu", weights_only=True)
    params = [p for group in optimizer["param_groups"] for p in group["params"]]
    if len(params) != len(param_names):
        raise ResumeFileError(f"{checkpoint}: the optimizer holds {len(params)} parameters, the model "
                              f"{len(param_names)} trainable ones")
    tensors = {f"model/{key}": value.contiguous() for key, value in weights.items()}
    for index, values in optimizer["state"].items():
        for field, value in values.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optimizer/{param_names[params.index(index)]}/{field}"] = value.detach().cpu().contiguous()
    curve = learning_curve(metrics_path, int(trainer["global_step"])) if metrics_path else []
    metadata = {
        "format": FORMAT,
        "checkpoint": checkpoint.name,
        "param_names": json.dumps(param_names),
        "param_groups": json.dumps(optimizer["param_groups"]),
        "scheduler": json.dumps(scheduler),
        "trainer_state": json.dumps(trainer),
        "recipe": json.dumps(recipe or {}),
        "learning_curve": json.dumps(curve),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, out)  # the old file or the new one, never half
    return out


def read_metadata(path: Path) -> dict:
    """The file's metadata, JSON values decoded."""
    with safe_open(str(path), framework="pt") as handle:
        raw = handle.metadata() or {}
    if raw.get("format") != FORMAT:
        raise ResumeFileError(f"{path} is not a resume file (format {raw.get('format')!r}, expected {FORMAT!r})")
    return {key: (value if key in ("format", "checkpoint") else json.loads(value)) for key, value in raw.items()}


def unpack(path: Path, model: torch.nn.Module, optimizer, scheduler, recipe: dict | None = None) -> tuple[dict, list]:
    """Load a resume file into a freshly built ``model``, ``optimizer`` and ``scheduler``; returns the
    trainer state (a dict for `training.loop.TrainState`) and the learning curve.

    Refuses, naming what differs, a file whose recipe, parameter names or shapes do not match."""
    path = Path(path)
    meta = read_metadata(path)
    for key, value in (recipe or {}).items():
        saved = meta["recipe"].get(key)
        if key in meta["recipe"] and saved != value:
            raise ResumeFileError(f"{path}: made with {key}={saved!r}, the preset says {value!r}; "
                                  "move the file away to start afresh")
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    if names != meta["param_names"]:
        missing = sorted(set(meta["param_names"]) ^ set(names))[:3]
        raise ResumeFileError(f"{path}: its parameters are not the model's (first differences: {missing or 'order'})")
    tensors = load_file(str(path))
    weights = {key[len("model/"):]: value for key, value in tensors.items() if key.startswith("model/")}
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    own = model.state_dict()
    unexpected = sorted(set(weights) - set(own))
    missing = sorted(set(own) - set(weights) - frozen)
    if unexpected or missing:
        raise ResumeFileError(f"{path}: weights do not fit the model (unexpected {unexpected[:3]}, missing {missing[:3]})")
    for key, value in weights.items():
        if own[key].shape != value.shape:
            raise ResumeFileError(f"{path}: {key} has shape {tuple(value.shape)}, the model {tuple(own[key].shape)}")
    model.load_state_dict(weights, strict=False)
    state = {}
    for index, name in enumerate(names):
        prefix = f"optimizer/{name}/"
        values = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
        if values:
            state[index] = values
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler.load_state_dict(meta["scheduler"])
    return meta["trainer_state"], meta["learning_curve"]
