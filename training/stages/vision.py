"""Stage 0 (demo presets): the vision encoder learns where findings are, from dense phantom labels.

Contrastive training from scratch teaches DCFormer region, phase and plane, but not lesions: one
report per case is too weak a signal to find a 2-5 cm lesion in a 3D volume on a CPU budget. The
phantom generator knows every finding's voxels, so this stage trains the encoder with located targets
before SigLIP:

* a light feature-pyramid head on stages s1-s4 predicts, on the stride-8 grid, which finding kinds
  are present in each cell (sigmoid, positives up-weighted) and which organ it shows (softmax);
* a head on the flattened s3 and s4 tokens (what the VLM's projector reads) predicts the case's set
  of (kind, site) findings, and one on the mean-pooled s4 tokens (what SigLIP reads) does the same.

Only the encoder is kept (``vision_tower.*``); the heads are training aids, saved beside it for
analysis. The stage records a learning curve (test exact-set accuracy and finding F1 of the token
head against minutes and cases seen) in ``metrics.jsonl``; the labels never enter the model input.
"""

from __future__ import annotations

import functools

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from napari_med3dvlm.model.dcformer import DCFormer, DCFormerConfig, feature_map_to_tokens
from napari_med3dvlm.phantoms.case import KINDS

from ..config import stage_config
from ..data.dense import (
    FINDING_LABELS,
    NUM_KINDS,
    NUM_ORGANS,
    DenseCache,
    DenseDataset,
    DenseSpec,
    collate_dense,
)
from ..loop import train
from .common import count_parameters, loop_config, save_result, stage_dir

HEADS_FILE = "heads.safetensors"


class DenseVisionModel(nn.Module):
    """DCFormer plus the training-only heads described in the module docstring."""

    def __init__(self, variant: str, input_size, width: int = 64, layer_scale_init: float | None = None,
                 stem: str = "decomposed"):
        super().__init__()
        self.encoder = DCFormer(DCFormerConfig(variant=variant, stem=stem))
        if layer_scale_init is not None:  # a larger start lets the residual branches learn sooner
            for block in self.encoder.modules():
                if hasattr(block, "scale") and isinstance(block.scale, nn.Parameter):
                    nn.init.constant_(block.scale, layer_scale_init)
        channels = self.encoder.hidden_sizes
        self.lateral = nn.ModuleList(nn.Conv3d(c, width, 1) for c in channels[1:])
        self.dense = nn.Sequential(
            nn.GELU(), nn.Conv3d(width, width, 3, padding=1), nn.GELU(), nn.Conv3d(width, NUM_KINDS + NUM_ORGANS, 1)
        )
        d, h, w = input_size
        n3 = -(-d // 32) * -(-h // 32) * -(-w // 32)
        n4 = -(-d // 64) * -(-h // 64) * -(-w // 64)
        self.token_head = nn.Linear(n3 * channels[3] + n4 * channels[4], len(FINDING_LABELS))
        # per s3 token: which finding kinds lie in its block (located targets on what the projector reads)
        self.token_kind = nn.Conv3d(channels[3], NUM_KINDS, 1)
        self.pooled_head = nn.Linear(channels[4], len(FINDING_LABELS))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.encoder._check_input(images)
        maps = self.encoder.encoder(images.permute(0, 1, 3, 4, 2))  # (B, C, H, W, D) per stage
        grid = maps[1].shape[2:]
        pyramid = sum(
            F.interpolate(lat(m), size=grid, mode="trilinear", align_corners=False) if m.shape[2:] != grid else lat(m)
            for lat, m in zip(self.lateral, maps[1:])
        )
        dense = self.dense(pyramid)
        s3, s4 = feature_map_to_tokens(maps[3]), feature_map_to_tokens(maps[4])
        tokens = torch.cat([s3.flatten(1), s4.flatten(1)], dim=1)
        return {
            "kind": dense[:, :NUM_KINDS],
            "organ": dense[:, NUM_KINDS:],
            "findings": self.token_head(tokens),
            "token_kind": self.token_kind(maps[3]),
            "findings_pooled": self.pooled_head(s4.mean(dim=1)),
        }


def balanced_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE per channel (dim 1) with its positive and negative cells weighted equally over the batch,
    averaged over channels: lesion cells are about 0.1 % of all cells, so a plain mean (or a small fixed
    ``pos_weight``) leaves them unlearned, and a shared balance would be dominated by the large diffuse
    findings."""
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    dims = [0] + list(range(2, loss.dim()))
    positive = (target > 0).float()
    pos_count = positive.sum(dims)
    neg_count = (1 - positive).sum(dims)
    pos_mean = (loss * positive).sum(dims) / pos_count.clamp(min=1)
    neg_mean = (loss * (1 - positive)).sum(dims) / neg_count.clamp(min=1)
    per_channel = torch.where(pos_count > 0, 0.5 * (pos_mean + neg_mean), neg_mean)
    return per_channel.mean()


def host_balanced_bce(logits: torch.Tensor, target: torch.Tensor, host: torch.Tensor) -> torch.Tensor:
    """`balanced_bce` with the negatives split in two: cells of an organ that can hold a focal lesion
    (``host``, a boolean map broadcast over channels) and all other cells. Positives, host negatives and
    other negatives weigh the same per channel. With one negative group the host parenchyma is a small
    share of it, and firing on every cell of the host organ is nearly optimal (docs/training.md); this
    weight makes lesion against parenchyma the decision the loss is about."""
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    dims = [0] + list(range(2, loss.dim()))
    positive = (target > 0).float()
    host = host.expand_as(loss).float() * (1 - positive)
    other = (1 - positive) * (1 - host)
    means, present = [], []
    for group in (positive, host, other):
        count = group.sum(dims)
        means.append((loss * group).sum(dims) / count.clamp(min=1))
        present.append((count > 0).float())
    means, present = torch.stack(means), torch.stack(present)
    per_channel = (means * present).sum(0) / present.sum(0).clamp(min=1)
    return per_channel.mean()


@functools.cache
def focal_host_labels() -> torch.Tensor:
    """Organ labels that host focal lesions (each site's own organ, not the tissue a lesion may spill into)."""
    from napari_med3dvlm.phantoms.lesions import SITES

    return torch.tensor(sorted({hosts[0] for _centre, _jitter, hosts in SITES.values()}))


def host_cells(organ: torch.Tensor) -> torch.Tensor:
    """(B, 1, h, w, d) boolean map of host-organ cells, in the layout of the dense logits, from the
    depth-first organ targets (B, d, h, w)."""
    return torch.isin(organ, focal_host_labels().to(organ.device)).permute(0, 2, 3, 1)[:, None]


def case_max_bce(logits: torch.Tensor, case_target: torch.Tensor) -> torch.Tensor:
    """Multiple-instance loss: per case and channel, BCE of the highest cell's logit against whether the
    case holds that kind anywhere (``case_target`` (B, K), from the case's findings, not from the cells:
    a small lesion must not count as absent). In a case without the kind the gradient lands on the one
    cell that looks most like it: hard-negative mining by construction (normal parenchyma next to the
    lesion's look-alikes), which a mean over mostly-easy background cells never does."""
    case_logit = logits.flatten(2).amax(2)
    return F.binary_cross_entropy_with_logits(case_logit, case_target.float())


def dense_loss(model, batch, pos_weight: float = 5.0, balanced: bool = False, token_weight: float = 0.0,
               case_weight: float = 0.0, host_balanced: bool = False):
    out = model(batch["images"])
    # targets come as (B, [K,] D, H, W); the encoder's maps are depth-last (B, [K,] H, W, D)
    kind_target = batch["kind"].permute(0, 1, 3, 4, 2)
    organ_target = batch["organ"].permute(0, 2, 3, 1)
    weight = torch.tensor(pos_weight, device=kind_target.device)
    if host_balanced:
        kind_loss = host_balanced_bce(out["kind"].float(), kind_target, host_cells(batch["organ"]))
    elif balanced:
        kind_loss = balanced_bce(out["kind"].float(), kind_target)
    else:
        kind_loss = F.binary_cross_entropy_with_logits(out["kind"].float(), kind_target, pos_weight=weight)
    token_loss = torch.zeros((), device=kind_target.device)
    if token_weight:
        grid = out["token_kind"].shape[2:]
        factor = [t // g for t, g in zip(kind_target.shape[2:], grid)]
        token_target = F.max_pool3d(kind_target, kernel_size=factor, stride=factor)
        token_loss = balanced_bce(out["token_kind"].float(), (token_target > 0.2).float())
    organ_loss = F.cross_entropy(out["organ"].float(), organ_target)
    labels = batch["labels"]
    finding_loss = F.binary_cross_entropy_with_logits(out["findings"].float(), labels, pos_weight=weight)
    pooled_loss = F.binary_cross_entropy_with_logits(out["findings_pooled"].float(), labels, pos_weight=weight)
    case_loss = torch.zeros((), device=kind_target.device)
    if case_weight:
        case_loss = case_max_bce(out["kind"].float(), batch["case_kinds"])
        if token_weight:
            case_loss = 0.5 * (case_loss + case_max_bce(out["token_kind"].float(), batch["case_kinds"]))
    loss = (kind_loss + 0.5 * organ_loss + finding_loss + pooled_loss + token_weight * token_loss
            + case_weight * case_loss)
    with torch.no_grad():
        exact = ((out["findings"] > 0) == (labels > 0.5)).all(dim=1).float().mean()
    return loss, {"kind_loss": kind_loss.item(), "organ_loss": organ_loss.item(), "token_loss": token_loss.item(),
                  "case_loss": case_loss.item(),
                  "finding_loss": finding_loss.item(), "batch_exact": exact.item()}


def set_scores(predicted: np.ndarray, truth: np.ndarray, focal: np.ndarray) -> dict[str, float]:
    """Exact-set accuracy and micro precision/recall/F1 over (kind, site) findings."""
    def prf(p, t):
        tp = float((p & t).sum())
        precision = tp / max(1.0, float(p.sum()))
        recall = tp / max(1.0, float(t.sum()))
        f1 = 2 * precision * recall / max(1e-9, precision + recall)
        return precision, recall, f1

    precision, recall, f1 = prf(predicted, truth)
    return {
        "exact": float((predicted == truth).all(axis=1).mean()),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "focal_f1": prf(predicted[:, focal], truth[:, focal])[2],
        "diffuse_f1": prf(predicted[:, ~focal], truth[:, ~focal])[2],
    }


FOCAL_KINDS = ("cyst", "mass", "calcification", "haemorrhage")
FOCAL = np.array([kind in FOCAL_KINDS for kind, _ in FINDING_LABELS])


def rank_auc(truth: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC: the Mann-Whitney U of positives against negatives over the number of pairs."""
    from scipy.stats import mannwhitneyu

    truth = np.asarray(truth, bool)
    positives, negatives = score[truth], score[~truth]
    return float(mannwhitneyu(positives, negatives).statistic / (len(positives) * len(negatives)))


@torch.no_grad()
def evaluate_findings(model: DenseVisionModel, dataset: DenseDataset, batch_size: int = 32) -> dict[str, float]:
    """Scores of the token head (and the pooled head) on ``dataset``."""
    was_training = model.training
    model.eval()
    preds, pooled, truth, dense_max, token_max, kinds_true = [], [], [], [], [], []
    for start in range(0, len(dataset), batch_size):
        batch = collate_dense([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        out = model(batch["images"])
        preds.append((out["findings"] > 0).numpy())
        pooled.append((out["findings_pooled"] > 0).numpy())
        truth.append(batch["labels"].numpy() > 0.5)
        dense_max.append(out["kind"].flatten(2).amax(2).numpy())
        token_max.append(out["token_kind"].flatten(2).amax(2).numpy())
        kinds_true.append(batch["case_kinds"].numpy() > 0.5)
    model.train(was_training)
    truth = np.concatenate(truth)
    scores = set_scores(np.concatenate(preds), truth, FOCAL)
    scores["pooled_exact"] = set_scores(np.concatenate(pooled), truth, FOCAL)["exact"]
    # Does the case hold each focal kind? The maximum of the dense head (and of the s3 token-kind head)
    # over the case's cells, ranked across cases (mean AUC over the focal kinds). A high per-cell AUC can
    # come from knowing which organs host lesions; this needs the lesion itself: 0.5 is chance.
    true = np.concatenate(kinds_true)
    for name, values in (("dense", dense_max), ("token", token_max)):
        values = np.concatenate(values)
        aucs = [rank_auc(true[:, k], values[:, k]) for k, kind in enumerate(KINDS)
                if kind in FOCAL_KINDS and 0 < true[:, k].sum() < len(true)]
        scores[f"focal_case_auc_{name}"] = float(np.mean(aucs)) if aucs else float("nan")
    return {k: round(v, 4) for k, v in scores.items()}


def dense_caches(config: dict) -> tuple[DenseCache, DenseCache]:
    stage = stage_config(config, "vision")
    size = tuple(config["data"]["image_size"])
    window = config["data"].get("window", "soft tissue")
    root = Path(stage.get("cache_dir") or Path(config["output_dir"]) / "vision_dense")
    seed = int(stage.get("phantom_seed", 0))
    train_spec = DenseSpec(seed, "train", int(stage.get("train_cases", 2000)), size, window,
                           sampler=str(stage.get("train_sampler", "natural")))
    test_spec = DenseSpec(seed, "test", int(stage.get("test_cases", 200)), size, window)
    workers = int(stage.get("render_workers", 2))
    return (DenseCache(root / "train", train_spec).build(workers), DenseCache(root / "test", test_spec).build(workers))


def run(config: dict) -> dict:
    stage = stage_config(config, "vision")
    train_cache, test_cache = dense_caches(config)
    dataset = DenseDataset(train_cache.open())
    test = DenseDataset(test_cache.open())
    torch.manual_seed(int(stage.get("seed", 42)))
    model = DenseVisionModel(
        config["model"].get("vision_variant", "nano"),
        tuple(config["data"]["image_size"]),
        layer_scale_init=stage.get("layer_scale_init"),
        stem=stage.get("stem", "decomposed"),
    )
    cfg = loop_config(config, "vision")
    pos_weight = float(stage.get("pos_weight", 5.0))
    balanced = bool(stage.get("balanced_dense", False))
    token_weight = float(stage.get("token_kind_weight", 0.0))
    case_weight = float(stage.get("case_max_weight", 0.0))
    host_balanced = bool(stage.get("host_balanced_dense", False))
    train_eval = DenseDataset({k: v[: len(test)] for k, v in dataset.arrays.items()})

    def evaluate(m):
        return {"test": evaluate_findings(m, test), "train": evaluate_findings(m, train_eval)}

    model, state, accelerator = train(
        name="vision",
        model=model,
        dataset=dataset,
        collate_fn=collate_dense,
        compute_loss=lambda m, b: dense_loss(m, b, pos_weight, balanced, token_weight, case_weight, host_balanced),
        cfg=cfg,
        output_dir=stage_dir(config, "vision"),
        evaluate=evaluate,
        evaluate_every=int(stage.get("evaluate_every", 0)),
    )
    scores = evaluate_findings(model, test)
    info = {
        "steps": state.global_step,
        "minutes": round(state.elapsed_s / 60, 2),
        "cases_seen": state.global_step * cfg.batch_size * cfg.gradient_accumulation_steps,
        "train_cases": len(dataset),
        "trainable_parameters": count_parameters(model.encoder.parameters()),
        "test_findings": scores,
    }
    if accelerator.is_main_process:
        tensors = {f"vision_tower.{k}": v for k, v in model.encoder.state_dict().items()}
        folder = save_result(config, "vision", tensors, info)
        heads = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith("encoder.")}
        save_file(heads, str(folder / HEADS_FILE))
    return info
