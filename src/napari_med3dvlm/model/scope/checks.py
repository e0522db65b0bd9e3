"""The scope checks of one volume: the model-free ones (modality, slices, intensities, spacing) and
the distance of its features to the training features (`napari_med3dvlm.model.scope`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from .profile import DEFAULT_ADVICE, ScopeProfile
from .stats import siglip_feature, vlm_feature

logger = logging.getLogger(__name__)

#: Voxels at or below this are scanner padding outside the field of view, not tissue.
PADDING_HU = -1500.0


@dataclass(frozen=True)
class ScopeReason:
    code: str  # "modality", "slices", "intensity", "spacing", "features"
    message: str  # one plain-language clause, with the numbers
    short: str = ""  # a few words for the one-line banner

    @property
    def headline(self) -> str:
        return self.short or self.message


@dataclass
class ScopeResult:
    """What is unusual about a volume for a model (no reasons: in scope)."""

    reasons: list[ScopeReason] = field(default_factory=list)
    advice: str = DEFAULT_ADVICE
    distance: float | None = None  # feature distance / threshold (1.0 = at the threshold)
    checked: tuple[str, ...] = ()  # which checks ran

    @property
    def flagged(self) -> bool:
        return bool(self.reasons)

    @property
    def messages(self) -> list[str]:
        return [r.message for r in self.reasons]

    @property
    def codes(self) -> list[str]:
        return [r.code for r in self.reasons]

    def warning(self) -> str:
        """The full warning for the CLI and exports: what is unusual (with numbers) and what to do."""
        if not self.reasons:
            return ""
        return f"Outside what this model knows: {'; '.join(self.messages)}. {self.advice}"

    def headline(self) -> str:
        """The one-line version for a dock: what is unusual, in a few words, and what to do."""
        if not self.reasons:
            return ""
        return f"Outside what this model knows: {', '.join(r.headline for r in self.reasons)}. {self.advice}"

    def to_dict(self) -> dict:
        return {
            "in_scope": not self.reasons,
            "reasons": self.messages,
            "codes": self.codes,
            "warning": self.warning(),
            "headline": self.headline(),
            "feature_distance": None if self.distance is None else round(float(self.distance), 3),
            "checks": list(self.checked),
        }


def _stack_view(data, spacing, plane: str | None):
    """Slices in the acquisition plane's stack, the display shape, and the stack's (D, H, W) spacing."""
    from napari_med3dvlm.io import stack_spacing

    plane = plane or "axial"
    shape = tuple(int(s) for s in data.shape)
    return int(stack_spacing(shape, plane)[0]), shape, stack_spacing(spacing, plane)


def _sample(data, target: int = 2_000_000) -> np.ndarray:
    """A strided sample of a (possibly lazy) array, at most about ``target`` voxels."""
    shape = data.shape
    total = int(np.prod(shape))
    step = max(1, int((total / target) ** (1 / 3)))
    extra = max(1, -(-total // (step**3 * target)))  # the rest of the thinning, on the first axis only
    sample = np.asarray(data[:: step * extra, ::step, ::step])
    return sample[np.isfinite(sample)] if np.issubdtype(sample.dtype, np.floating) else sample.ravel()


def intensity_reasons(data) -> list[ScopeReason]:
    """Values a CT in Hounsfield units cannot have (for a volume labelled CT)."""
    values = _sample(data).astype(np.float32, copy=False)
    if values.size == 0:
        return [ScopeReason("intensity", "the volume holds no finite values", "no finite values")]
    tissue = values[values > PADDING_HU]  # scanner padding (-2048, -3024) is not tissue
    if tissue.size < 0.05 * values.size:
        return [ScopeReason("intensity", "almost every voxel is below -1500, which no tissue has in Hounsfield units",
                            "values are not Hounsfield units")]
    low, high = np.percentile(tissue, [0.5, 99.5])
    parts = []
    if low > -200:
        parts.append(f"no air (lowest {low:.0f}, air is -1000 HU)")
    if high > 3000:
        parts.append(f"values up to {high:.0f}, far above bone")
    if high - low < 300:
        parts.append(f"a span of only {high - low:.3g}")
    if not parts:
        return []
    return [ScopeReason(
        "intensity", "intensities implausible for CT in Hounsfield units: " + ", ".join(parts)
        + (" (not HU, or cropped inside the body)" if low > -200 else ""),
        "values unlike a CT in Hounsfield units",
    )]


def _range_text(pair) -> str:
    return f"{pair[0]:.1f}-{pair[1]:.1f} mm" if abs(pair[1] - pair[0]) >= 0.05 else f"{pair[0]:.1f} mm"


def volume_reasons(data, modality: str, spacing, plane: str | None, profile: ScopeProfile) -> list[ScopeReason]:
    """The model-free checks of one display-ordered (z, y, x) volume."""
    reasons = []
    modality = (modality or "").upper()
    known = tuple(m.upper() for m in profile.modalities)
    if modality not in known:
        what = f" ({profile.training_data})" if profile.training_data else ""
        reasons.append(ScopeReason(
            "modality", f"it is {modality or 'of unknown modality'}, the model knows {'/'.join(known)} only{what}",
            f"{modality or 'unknown'} scan, the model knows {'/'.join(known)}",
        ))
    slices, shape, stack_spacing = _stack_view(data, spacing, plane)
    smallest = min(shape)
    if smallest < 2:
        reasons.append(ScopeReason("slices", "it is a 2-D image (one slice); the model reads 3-D volumes", "a 2-D image"))
    elif min(slices, smallest) < profile.min_slices:
        reasons.append(ScopeReason(
            "slices",
            f"only {min(slices, smallest)} slices (a localizer or a thin slab); the model expects at least {profile.min_slices}",
            f"only {min(slices, smallest)} slices",
        ))
    if modality == "CT":
        reasons.extend(intensity_reasons(data))
    tol = profile.spacing_tolerance
    far = []
    if profile.slice_spacing:
        lo, hi = profile.slice_spacing
        if not lo / tol <= stack_spacing[0] <= hi * tol:
            far.append(f"slices {stack_spacing[0]:.2g} mm apart (training: {_range_text(profile.slice_spacing)})")
    if profile.pixel_spacing:
        lo, hi = profile.pixel_spacing
        pixel = max(stack_spacing[1], stack_spacing[2])
        if not lo / tol <= pixel <= hi * tol:
            far.append(f"{pixel:.2g} mm pixels (training: {_range_text(profile.pixel_spacing)})")
    if far:
        reasons.append(ScopeReason(
            "spacing", "voxel spacing far from the training data: " + ", ".join(far), "voxel spacing unlike the training data"
        ))
    return reasons


def feature_reason(features: torch.Tensor, profile: ScopeProfile, kind: str) -> tuple[ScopeReason | None, float | None]:
    """The model-based check: (reason or None, distance / threshold), or (None, None) without statistics.

    ``features`` are the projector output (kind "vlm", (1, N, H)) or SigLIP embeddings ("siglip", (1, E)).
    """
    stats = profile.features.get(kind)
    if stats is None:
        return None, None
    vector = vlm_feature(features) if kind == "vlm" else siglip_feature(features)
    if vector.shape[-1] != stats.mean.shape[0]:
        logger.warning("scope statistics are %d-d but the model gives %d-d features; skipped", stats.mean.shape[0], vector.shape[-1])
        return None, None
    ratio = float(stats.distance(vector)[0]) / stats.threshold
    if ratio <= 1.0:
        return None, ratio
    what = "the image features" if kind == "vlm" else "the image embedding"
    return ScopeReason(
        "features", f"{what} are {ratio:.1f}x farther from the training scans than the in-distribution limit",
        f"an image unlike the training scans ({ratio:.1f}x the limit)",
    ), ratio


def check_volume(
    data,
    modality: str = "CT",
    spacing=(1.0, 1.0, 1.0),
    plane: str | None = "axial",
    profile: ScopeProfile | None = None,
    features: torch.Tensor | None = None,
    kind: str = "vlm",
) -> ScopeResult:
    """All checks for one volume; ``features`` (what the model produced for it) adds the model-based one."""
    profile = profile or ScopeProfile(source="defaults")
    reasons = volume_reasons(data, modality, spacing, plane, profile)
    checked = ["modality", "slices", "spacing"] + (["intensity"] if (modality or "").upper() == "CT" else [])
    distance = None
    if features is not None:
        reason, distance = feature_reason(features, profile, kind)
        if distance is not None:
            checked.append(f"features:{kind}")
        if reason is not None:
            reasons.append(reason)
    return ScopeResult(reasons=reasons, advice=profile.advice, distance=distance, checked=tuple(checked))
