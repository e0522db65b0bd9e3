"""The vision stage's losses, one module for the stage and the experiments.

The dense kind head is trained with a per-channel balanced BCE (lesion cells are about 0.1 % of all
cells), the s3 token-kind head the same way on the s3 blocks, each case's most lesion-like cell with
the case-level max loss, the organ head with cross-entropy and the two set heads with BCE whose
positives weigh `SET_POS_WEIGHT`. What the earlier rounds measured (docs/training.md) fixed every
weight but one choice, the dense loss (`DENSE_LOSSES`).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

#: The dense kind head's loss: ``balanced`` (`balanced_bce`) or ``host-balanced`` (`host_balanced_bce`,
#: negatives inside host organs as their own group; no gain measured, kept for the experiments).
DENSE_LOSSES = ("balanced", "host-balanced")
#: Positive weight of the case-level (kind, site) set heads.
SET_POS_WEIGHT = 5.0
#: A cell of the s3 token grid holds a kind when its max-pooled presence exceeds this.
TOKEN_PRESENCE = 0.2


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


def dense_kind_loss(logits: torch.Tensor, kind_target: torch.Tensor, organ: torch.Tensor,
                    dense_loss: str = "balanced") -> torch.Tensor:
    """The dense kind head's loss, depth-last logits and targets; ``organ`` depth-first (B, d, h, w)."""
    if dense_loss == "balanced":
        return balanced_bce(logits, kind_target)
    if dense_loss == "host-balanced":
        return host_balanced_bce(logits, kind_target, host_cells(organ))
    raise ValueError(f"dense_loss must be one of {DENSE_LOSSES}, got {dense_loss!r}")


def technique_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each technique attribute (region, phase, plane: `TECHNIQUE`), summed: logits
    (B, classes of all three), target (B, 3) class indices."""
    from ..data.dense import TECHNIQUE

    loss, start = logits.new_zeros(()), 0
    for column, (_name, values) in enumerate(TECHNIQUE):
        loss = loss + F.cross_entropy(logits[:, start : start + len(values)], target[:, column])
        start += len(values)
    return loss


def vision_loss(model, batch: dict, dense_loss: str = "balanced", technique_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """The vision stage's loss for one batch of `training.data.dense.DenseDataset` items, and its parts;
    with ``technique_weight`` (and a model with the technique head) also the case technique's."""
    out = model(batch["images"])
    # targets come as (B, [K,] D, H, W); the encoder's maps are depth-last (B, [K,] H, W, D)
    kind_target = batch["kind"].permute(0, 1, 3, 4, 2)
    organ_target = batch["organ"].permute(0, 2, 3, 1)
    kind_loss = dense_kind_loss(out["kind"].float(), kind_target, batch["organ"], dense_loss)
    grid = out["token_kind"].shape[2:]
    factor = [t // g for t, g in zip(kind_target.shape[2:], grid)]
    token_target = F.max_pool3d(kind_target, kernel_size=factor, stride=factor)
    token_loss = balanced_bce(out["token_kind"].float(), (token_target > TOKEN_PRESENCE).float())
    organ_loss = F.cross_entropy(out["organ"].float(), organ_target)
    labels = batch["labels"]
    weight = torch.tensor(SET_POS_WEIGHT, device=kind_target.device)
    finding_loss = F.binary_cross_entropy_with_logits(out["findings"].float(), labels, pos_weight=weight)
    pooled_loss = F.binary_cross_entropy_with_logits(out["findings_pooled"].float(), labels, pos_weight=weight)
    case_loss = 0.5 * (case_max_bce(out["kind"].float(), batch["case_kinds"])
                       + case_max_bce(out["token_kind"].float(), batch["case_kinds"]))
    loss = kind_loss + 0.5 * organ_loss + finding_loss + pooled_loss + token_loss + case_loss
    parts = {}
    if technique_weight and "technique" in out:
        tech = technique_loss(out["technique"].float(), batch["technique"])
        loss = loss + technique_weight * tech
        parts["technique_loss"] = tech.item()
    with torch.no_grad():
        exact = ((out["findings"] > 0) == (labels > 0.5)).all(dim=1).float().mean()
    return loss, {"kind_loss": kind_loss.item(), "organ_loss": organ_loss.item(), "token_loss": token_loss.item(),
                  "case_loss": case_loss.item(),
                  "finding_loss": finding_loss.item(), "batch_exact": exact.item(), **parts}
