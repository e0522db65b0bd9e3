"""Volumes in and out: NIfTI and DICOM reading, display windows, and model preprocessing.

Every reader returns `Volume` objects in one display orientation (see `orientation`); every
consumer of pixels for the model goes through `model_input` (a `Volume` in, the model's
(1, 1, D, H, W) tensor out), which runs `preprocess_volume`.
"""

from ._napari import (
    ModelInputOverlay,
    layer_dicom_source,
    layer_plane,
    model_input_overlay,
    volume_from_layer_data,
    volume_layer_data,
)
from ._util import VolumeReadError, is_regular_file, short_hash
from .dicom import SeriesInfo
from .nifti import write_nifti_volume
from .orientation import acquisition_view, display_from_plane, plane_view, stack_spacing
from .preprocess import PUBLISHED_INPUT_SIZE, WINDOW_PRESETS, PreprocessTransform, model_input, preprocess_volume
from .reading import list_series, read_volume, read_volumes
from .selection import select_series
from .volume import PLANE_NAMES, DicomSource, Plane, Volume
from .windows import contrast_limits

__all__ = [
    "PLANE_NAMES",
    "PUBLISHED_INPUT_SIZE",
    "WINDOW_PRESETS",
    "DicomSource",
    "ModelInputOverlay",
    "Plane",
    "PreprocessTransform",
    "SeriesInfo",
    "Volume",
    "VolumeReadError",
    "acquisition_view",
    "contrast_limits",
    "display_from_plane",
    "is_regular_file",
    "layer_dicom_source",
    "layer_plane",
    "list_series",
    "model_input",
    "model_input_overlay",
    "plane_view",
    "preprocess_volume",
    "read_volume",
    "read_volumes",
    "select_series",
    "short_hash",
    "stack_spacing",
    "volume_from_layer_data",
    "volume_layer_data",
    "write_nifti_volume",
]
