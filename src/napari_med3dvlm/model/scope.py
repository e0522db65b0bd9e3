"""Is this volume inside what the model knows? Plain-language reasons when it is not.

A model always answers, also for a scan unlike anything it was trained on (a real head CT given to
the phantom demo model, an MR given to a CT model). Two kinds of checks say when that happens:

- **Model-free:** the modality against the model's modalities; a 2-D image or a localizer (too few
  slices); values that cannot be Hounsfield units for a CT; voxel spacing far from the training data.
- **From what the model already produces:** the distance of the image features (the projector output
  the LLM reads, or the SigLIP image embedding for retrieval) to the training distribution: a
  Mahalanobis distance in a low-rank Gaussian fitted to the training features (principal components
  plus an isotropic residual), flagged above a threshold chosen when the statistics are built (a high
  quantile of held-out training distances).

The numbers live next to the weights: ``scope.json`` (modalities, spacing ranges, thresholds) and
``scope.safetensors`` (means and principal components). ``python -m training.scope`` writes them
(docs/training.md). A folder without them gets the generic model-free checks only.

Nothing here blocks generation: the docks and the CLI show the reasons and still run the model.
The profile and the checks live beside the model (the statistics are part of a model folder);
`napari_med3dvlm.inference.scope` runs them for the engine's current model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

SCOPE_JSON = "scope.json"
SCOPE_TENSORS = "scope.safetensors"
SCOPE_FORMAT = 1

#: Stacks with fewer slices than this are treated as 2-D images or localizers when the model folder
#: does not say (the published model was trained on stacks of tens to hundreds of slices).
DEFAULT_MIN_SLICES = 8
#: Modalities assumed for a model folder without scope.json (the published Med3DVLM: CT and some MR).
DEFAULT_MODALITIES = ("CT", "MR")
#: Spacing is "far" from the training data when outside [low / tol, high * tol].
DEFAULT_SPACING_TOLERANCE = 1.5
DEFAULT_ADVICE = "Treat the text with caution; a model trained on such scans would be needed."
#: Voxels at or below this are scanner padding outside the field of view, not tissue.
PADDING_HU = -1500.0

#: Feature kinds: "vlm" is the projector output the LLM reads, "siglip" the SigLIP image embedding.
KINDS = ("vlm", "siglip")


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


# -- statistics -------------------------------------------------------------------------------


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


def weights_fingerprint(files) -> str:
    """Size plus sha256 of the first and last MiB of each weight file: changes when a model is
    retrained, costs milliseconds even for a 15 GB model, and ignores timestamps (git, copies)."""
    digest = hashlib.sha256()
    for path in sorted(Path(f) for f in files):
        size = path.stat().st_size
        digest.update(f"{path.name}|{size}|".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(-(1 << 20), 2)
                digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]


def weight_files(folder, kind: str) -> list[Path]:
    """The files whose weights produce the features of ``kind`` in a model folder."""
    folder = Path(folder)
    if kind == "siglip" and (folder / "siglip").is_dir():
        folder = folder / "siglip"
    return sorted(p for p in folder.glob("*.safetensors") if p.name != SCOPE_TENSORS)


@dataclass
class ScopeProfile:
    """What a model was trained on, as far as the checks need it."""

    modalities: tuple[str, ...] = DEFAULT_MODALITIES
    min_slices: int = DEFAULT_MIN_SLICES
    slice_spacing: tuple[float, float] | None = None  # mm, along the stack axis
    pixel_spacing: tuple[float, float] | None = None  # mm, in-plane
    spacing_tolerance: float = DEFAULT_SPACING_TOLERANCE
    training_data: str = ""  # e.g. "synthetic phantom CT"
    advice: str = DEFAULT_ADVICE
    features: dict[str, FeatureStats] = field(default_factory=dict)
    source: str = ""  # "scope.json" or "defaults"

    def to_json(self) -> dict:
        values = {
            "format": SCOPE_FORMAT,
            "training_data": self.training_data,
            "modalities": list(self.modalities),
            "min_slices": self.min_slices,
            "slice_spacing_mm": list(self.slice_spacing) if self.slice_spacing else None,
            "pixel_spacing_mm": list(self.pixel_spacing) if self.pixel_spacing else None,
            "spacing_tolerance": self.spacing_tolerance,
            "advice": self.advice,
        }
        for kind, stats in self.features.items():
            values[kind] = stats.info
        return values

    def save(self, folder) -> tuple[Path, Path]:
        """Write scope.json and scope.safetensors into a model folder."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for kind, stats in self.features.items():
            tensors.update(stats.tensors(kind))
        tensor_path = folder / SCOPE_TENSORS
        if tensors:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tensor_path), metadata={"format": "pt"})
        json_path = folder / SCOPE_JSON
        json_path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return json_path, tensor_path

    @classmethod
    def load(cls, folder) -> ScopeProfile:
        """The folder's profile; the generic defaults when it has no scope.json. Feature statistics
        computed for other weights (the model was retrained since) are left out, with a log line."""
        folder = Path(folder)
        path = folder / SCOPE_JSON
        if not path.is_file():
            return cls(source="defaults")
        values = json.loads(path.read_text(encoding="utf-8"))
        if int(values.get("format", 1)) > SCOPE_FORMAT:
            logger.warning("%s was written by a newer napari-med3dvlm; using the generic checks", SCOPE_JSON)
            return cls(source="defaults")
        profile = cls(
            modalities=tuple(str(m).upper() for m in values.get("modalities") or DEFAULT_MODALITIES),
            min_slices=int(values.get("min_slices") or DEFAULT_MIN_SLICES),
            slice_spacing=_pair(values.get("slice_spacing_mm")),
            pixel_spacing=_pair(values.get("pixel_spacing_mm")),
            spacing_tolerance=float(values.get("spacing_tolerance") or DEFAULT_SPACING_TOLERANCE),
            training_data=str(values.get("training_data") or ""),
            advice=str(values.get("advice") or DEFAULT_ADVICE),
            source=SCOPE_JSON,
        )
        tensor_path = folder / SCOPE_TENSORS
        kinds = [k for k in KINDS if isinstance(values.get(k), dict)]
        if kinds and tensor_path.is_file():
            from safetensors.torch import load_file

            tensors = load_file(str(tensor_path))
            for kind in kinds:
                info = values[kind]
                expected = info.get("weights")
                if expected and expected != weights_fingerprint(weight_files(folder, kind)):
                    logger.warning(
                        "%s statistics in %s are for other weights (the model was retrained); recompute them "
                        "with `python -m training.scope`", kind, SCOPE_JSON,
                    )
                    continue
                profile.features[kind] = FeatureStats.from_tensors(tensors, kind, info)
        return profile


def _pair(value):
    return None if not value else (float(value[0]), float(value[1]))


_profiles: dict[str, tuple[tuple, ScopeProfile]] = {}
_profiles_lock = threading.Lock()


def profile_for(source: str) -> ScopeProfile:
    """The profile of a model source ("embedded", a folder or a hub id); cached per file version."""
    from napari_med3dvlm.model.loading import resolve_source

    try:
        folder = Path(resolve_source(source))
    except Exception as err:  # noqa: BLE001 - a model that cannot be found gets the generic checks
        logger.info("no scope statistics for %s: %s", source, err)
        return ScopeProfile(source="defaults")
    stamp = tuple(
        (p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in (folder / SCOPE_JSON, folder / SCOPE_TENSORS) if p.exists()
    )
    with _profiles_lock:
        cached = _profiles.get(str(folder))
        if cached is not None and cached[0] == stamp:
            return cached[1]
    profile = ScopeProfile.load(folder)
    with _profiles_lock:
        _profiles[str(folder)] = (stamp, profile)
    return profile


# -- the checks -------------------------------------------------------------------------------


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
