"""The feature statistics of the scope check: a low-rank Gaussian of the training features (principal
components plus an isotropic residual), its fit with a held-out threshold, and the feature summaries
it is fitted on (`napari_med3dvlm.model.scope`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

@dataclass
class FeatureStats:
    """A low-rank Gaussian of training features and the distance threshold chosen at build time."""

    mean: torch.Tensor  # (d,)
    components: torch.Tensor  # (k, d), orthonormal rows
    variances: torch.Tensor  # (k,)
    residual_variance: float
    threshold: float
    info: dict = field(default_factory=dict)

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance of (B, d) features (principal part + isotropic residual)."""
        x = features.detach().to(torch.float64).cpu() - self.mean
        projected = x @ self.components.T
        residual = (x * x).sum(-1) - (projected * projected).sum(-1)
        return (projected * projected / self.variances).sum(-1) + residual.clamp_min(0) / self.residual_variance

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.mean": self.mean.float(),
            f"{prefix}.components": self.components.float(),
            f"{prefix}.variances": self.variances.float(),
            f"{prefix}.residual_variance": torch.tensor([self.residual_variance], dtype=torch.float32),
        }

    @classmethod
    def from_tensors(cls, tensors: dict, prefix: str, info: dict) -> FeatureStats:
        return cls(
            mean=tensors[f"{prefix}.mean"].double(),
            components=tensors[f"{prefix}.components"].double(),
            variances=tensors[f"{prefix}.variances"].double(),
            residual_variance=float(tensors[f"{prefix}.residual_variance"][0]),
            threshold=float(info["threshold"]),
            info=info,
        )


def fit_gaussian(features: torch.Tensor, components: int = 16) -> tuple:
    """(mean, components, variances, residual variance) of (N, d) features."""
    x = features.detach().to(torch.float64).cpu()
    n, d = x.shape
    if n < 3:
        raise ValueError(f"need at least 3 training features, got {n}")
    mean = x.mean(0)
    centred = x - mean
    k = max(1, min(int(components), n - 2, d - 1))
    _, singular, vt = torch.linalg.svd(centred, full_matrices=False)
    power = singular**2 / (n - 1)
    variances = power[:k].clamp_min(1e-12)
    residual = float(power[k:].sum()) / max(d - k, 1)
    return mean, vt[:k].contiguous(), variances, max(residual, 1e-12)


def fit_feature_stats(
    features: torch.Tensor,
    components: int = 16,
    quantile: float = 0.995,
    folds: int = 5,
    seed: int = 0,
) -> FeatureStats:
    """Fit on all features; the threshold is the ``quantile`` of out-of-fold distances (each case
    scored by a fit without its fold), so it reflects how far *unseen* in-distribution cases fall."""
    x = features.detach().to(torch.float64).cpu()
    n = x.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    folds = max(2, min(int(folds), n // 3))
    held_out = torch.empty(n, dtype=torch.float64)
    for fold in range(folds):
        test = order[fold::folds]
        mask = torch.ones(n, dtype=torch.bool)
        mask[test] = False
        stats = FeatureStats(*fit_gaussian(x[mask], components), threshold=float("inf"))
        held_out[test] = stats.distance(x[test])
    threshold = float(torch.quantile(held_out, quantile))
    mean, comps, variances, residual = fit_gaussian(x, components)
    info = {
        "threshold": threshold,
        "quantile": quantile,
        "components": int(comps.shape[0]),
        "dim": int(x.shape[1]),
        "cases": int(n),
        "folds": int(folds),
        "heldout_median": float(held_out.median()),
        "heldout_flagged": float((held_out > threshold).double().mean()),
    }
    return FeatureStats(mean, comps, variances, residual, threshold, info)


def vlm_feature(image_features: torch.Tensor) -> torch.Tensor:
    """(B, N, H) projector output -> (B, 2H) summary: mean and spread over the N image embeddings."""
    x = image_features.detach().float()
    if x.ndim == 2:
        x = x[None]
    return torch.cat([x.mean(1), x.std(1, unbiased=False)], dim=-1)


def siglip_feature(embedding) -> torch.Tensor:
    """(B, E) SigLIP image embeddings (unit vectors, as the retrieval index stores them)."""
    x = torch.as_tensor(np.asarray(embedding, dtype=np.float32))
    return x[None] if x.ndim == 1 else x
