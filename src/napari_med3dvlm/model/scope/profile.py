"""The scope profile stored beside a model's weights: ``scope.json`` (modalities, spacing ranges,
thresholds) and ``scope.safetensors`` (means and principal components), read once per file version
(`napari_med3dvlm.model.scope`)."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..sources import SIGLIP_SUBFOLDER, content_fingerprint
from .stats import FeatureStats

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

#: Feature kinds: "vlm" is the projector output the LLM reads, "siglip" the SigLIP image embedding.
KINDS = ("vlm", "siglip")


def weight_files(folder, kind: str) -> list[Path]:
    """The files whose weights produce the features of ``kind`` in a model folder."""
    folder = Path(folder)
    if kind == "siglip" and (folder / SIGLIP_SUBFOLDER).is_dir():
        folder = folder / SIGLIP_SUBFOLDER
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
                if expected and expected != content_fingerprint(weight_files(folder, kind)):
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
