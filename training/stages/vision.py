"""Stage 0 (demo presets): the vision encoder learns where findings are, from dense phantom labels.

Contrastive training from scratch teaches DCFormer region, phase and plane, but not lesions: one
report per case is too weak a signal to find a 2-5 cm lesion in a 3D volume on a CPU budget. The
phantom generator knows every finding's voxels, so this stage trains the encoder with located targets
before SigLIP (the model and its heads: `training.vision.model`; the losses: `training.vision.losses`;
the options: `training.vision.config`).

Only the encoder is kept (``vision_tower.*``); the heads are training aids, saved beside it for
analysis. The stage records a learning curve (test exact-set accuracy, finding F1 and case-level focal
AUC of the heads against steps and cases seen, `training.vision.metrics`) in ``metrics.jsonl``; the
labels never enter the model input. It is meant to run for hours: SIGTERM stops it at the next step
with a checkpoint, and the preset's ``resume_file`` carries that checkpoint to another machine
(`training.resume_file`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from ..data.dense import DenseCache, DenseDataset, DenseSpec, collate_dense, technique_targets
from ..loop import latest_checkpoint, train
from ..vision.config import VisionConfig
from ..vision.losses import vision_loss
from ..vision.metrics import evaluate_findings
from ..vision.model import DenseVisionModel
from .common import count_parameters, save_result, stage_dir

HEADS_FILE = "heads.safetensors"


def dense_caches(config: dict, vision: VisionConfig | None = None) -> tuple[DenseCache, DenseCache]:
    vision = vision or VisionConfig.from_preset(config)
    root = vision.cache_root(config["output_dir"])
    size, seed = vision.image_size, vision.phantom_seed
    train_spec = DenseSpec(seed, "train", vision.train_cases, size, vision.window, sampler=vision.train_sampler)
    test_spec = DenseSpec(seed, "test", vision.test_cases, size, vision.window)
    workers = vision.render_workers
    return (DenseCache(root / "train", train_spec).build(workers), DenseCache(root / "test", test_spec).build(workers))


def build_model(vision: VisionConfig) -> DenseVisionModel:
    """The stage's model, seeded: a fresh run and the export of a resume file build the same one."""
    torch.manual_seed(vision.loop.seed)
    return DenseVisionModel(vision.variant, vision.image_size, layer_scale_init=vision.layer_scale_init,
                            stem=vision.stem, technique=vision.technique_weight > 0)


def start_from(model: DenseVisionModel, path: str | Path) -> list[str]:
    """Load another vision run's weights into ``model``: the encoder entirely, every head whose name and
    shape match. ``path`` is a resume file (``model/<name>`` tensors) or a stage result
    (``vision_tower.<name>``: the encoder alone). Returns the names of the heads left as initialised."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vision.init_from: {path} is not a file (a vision resume file or result)")
    tensors = load_file(str(path))
    if any(k.startswith("model/") for k in tensors):
        state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    else:
        state = {"encoder." + k[len("vision_tower."):]: v for k, v in tensors.items() if k.startswith("vision_tower.")}
    own = model.state_dict()
    encoder = {k for k in own if k.startswith("encoder.")}
    if not encoder <= set(state) or any(state[k].shape != own[k].shape for k in encoder):
        raise ValueError(f"vision.init_from: {path} holds no encoder of this variant and stem")
    usable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(usable, strict=False)
    return sorted({k.split(".")[0] for k in own if k not in usable})


def target_reached(target: float):
    """``stop_when`` for the loop: True once the test split's focal case AUC (dense head) has been at
    least ``target`` at the last two evaluations (one evaluation of 200 cases moves by about 0.02),
    counted over the whole learning curve, so a stop and a resume between the two do not reset it."""

    def stop_when(evaluations: list[dict]) -> bool:
        last = [float(scores["test"]["focal_case_auc_dense"]) >= target for scores in evaluations[-2:]]
        stop_when.reached = last == [True, True]
        return stop_when.reached

    stop_when.reached = False
    return stop_when


def run(config: dict) -> dict:
    vision = VisionConfig.from_preset(config)
    train_cache, test_cache = dense_caches(config, vision)
    arrays, test_arrays = train_cache.open(), test_cache.open()
    if vision.technique_weight:
        arrays["technique"], test_arrays["technique"] = (technique_targets(c.cases()) for c in (train_cache, test_cache))
    dataset = DenseDataset(arrays)
    test = DenseDataset(test_arrays)
    model = build_model(vision)
    if vision.init_from:  # a checkpoint of this run, when there is one, replaces these weights
        fresh = start_from(model, vision.init_from)
        print(f"[vision] started from {vision.init_from}" + (f"; new: {', '.join(fresh)}" if fresh else ""))
    cfg = vision.loop
    train_eval = DenseDataset({k: v[: len(test)] for k, v in dataset.arrays.items()})

    def evaluate(m):
        return {"test": evaluate_findings(m, test), "train": evaluate_findings(m, train_eval)}

    resume_file = Path(vision.resume_file) if vision.resume_file else None
    stop_when = target_reached(vision.target_focal_auc) if vision.target_focal_auc is not None else None
    model, state, accelerator = train(
        name="vision",
        model=model,
        dataset=dataset,
        collate_fn=collate_dense,
        compute_loss=lambda m, b: vision_loss(m, b, vision.dense_loss, vision.technique_weight),
        cfg=cfg,
        output_dir=stage_dir(config, "vision"),
        evaluate=evaluate,
        evaluate_every=vision.evaluate_every,
        resume_file=resume_file if resume_file is not None and resume_file.exists() else None,
        recipe=vision.recipe(),
        stop_when=stop_when,
    )
    scores = evaluate_findings(model, test)
    info = {
        "steps": state.global_step,
        # a finished run short of its schedule ended at the target (here or before a resume file carried it)
        "ended": ("schedule" if state.global_step >= state.total_steps else
                  "target focal AUC reached" if state.finished else "stop_after_steps"),
        "minutes": round(state.elapsed_s / 60, 2),
        "cases_seen": state.global_step * cfg.batch_size * cfg.gradient_accumulation_steps,
        "train_cases": len(dataset),
        "stem": vision.stem,
        **({"started_from": vision.init_from} if vision.init_from else {}),
        "trainable_parameters": count_parameters(model.encoder.parameters()),
        "test_findings": scores,
    }
    if accelerator.is_main_process:
        tensors = {f"vision_tower.{k}": v for k, v in model.encoder.state_dict().items()}
        folder = save_result(config, "vision", tensors, info)
        heads = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith("encoder.")}
        save_file(heads, str(folder / HEADS_FILE))
    return info


def export_resume(config: dict, path: str | Path | None = None) -> Path:
    """Pack the newest complete checkpoint of the stage into the resume file (``path``, else the
    preset's ``vision.resume_file``)."""
    from ..resume_file import ResumeFileError, pack

    vision = VisionConfig.from_preset(config)
    if not (path or vision.resume_file):
        raise ResumeFileError(f"preset {config.get('name', '?')!r} names no vision.resume_file: give --export-resume FILE")
    target = Path(path or vision.resume_file)
    folder = stage_dir(config, "vision")
    checkpoint = latest_checkpoint(folder / "checkpoints")
    if checkpoint is None:
        raise ResumeFileError(f"no complete checkpoint under {folder / 'checkpoints'}: nothing to export")
    model = build_model(vision)
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    return pack(checkpoint, target, names, metrics_path=folder / "metrics.jsonl", recipe=vision.recipe())
