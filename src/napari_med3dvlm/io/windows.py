"""Display contrast limits. The data always stays in its native units (HU for CT); a window is
only how napari maps those values to grey levels.
"""

from __future__ import annotations

import numpy as np

from ._util import sample_slices
from .preprocess import WINDOW_PRESETS
from .volume import Volume

#: Percentiles used for modalities without an absolute scale (MR, PET...).
MR_PERCENTILES = (1.0, 99.0)

#: Names accepted by `contrast_limits` besides the CT presets.
SPECIAL_PRESETS = ("auto", "dicom", "percentile")


def window_to_limits(center: float, width: float) -> tuple[float, float]:
    width = float(width)
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    return float(center) - width / 2.0, float(center) + width / 2.0


def percentile_limits(data: np.ndarray, percentiles=MR_PERCENTILES) -> tuple[float, float]:
    """Robust limits from a sample of slices, ignoring NaNs and the zero background."""
    sample = np.asarray(sample_slices(data, count=16), dtype=np.float32)
    values = sample[np.isfinite(sample)]
    nonzero = values[values != 0]
    values = nonzero if nonzero.size else values
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, percentiles)
    if high <= low:
        high = low + 1.0
    return float(low), float(high)


def contrast_limits(volume: Volume, preset="auto") -> tuple[float, float]:
    """(low, high) display limits for a volume.

    preset: a CT window name from `WINDOW_PRESETS` ("soft tissue", "lung", "bone", "brain"), a
    (center, width) pair, "dicom" (the file's window tags), "percentile" (1st..99th percentile) or
    "auto": the file's window if it has one, else soft tissue for CT and percentiles otherwise.
    """
    if preset is None:
        preset = "auto"
    if not isinstance(preset, str):
        center, width = preset
        return window_to_limits(center, width)
    key = preset.lower()
    if key in WINDOW_PRESETS:
        return window_to_limits(*WINDOW_PRESETS[key])
    if key == "dicom":
        if volume.window is None:
            raise ValueError("this volume has no window tags; choose a preset or 'percentile'")
        return window_to_limits(*volume.window)
    if key == "percentile":
        return percentile_limits(volume.data)
    if key == "auto":
        if isinstance(volume.window, str):  # a preset chosen for the model
            return contrast_limits(volume, volume.window)
        if volume.window is not None and volume.window[1] > 0:
            return window_to_limits(*volume.window)
        if volume.modality.upper() == "CT":
            return window_to_limits(*WINDOW_PRESETS["soft tissue"])
        return percentile_limits(volume.data)
    raise ValueError(
        f"unknown window preset {preset!r}; choose from {sorted(WINDOW_PRESETS) + list(SPECIAL_PRESETS)}"
    )
