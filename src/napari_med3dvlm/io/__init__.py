"""Volumes in and out: NIfTI and DICOM reading, display windows, and model preprocessing.

Every reader returns `Volume` objects in one display orientation (see `orientation`); every
consumer of pixels for the model goes through `preprocess_volume`.
"""

from ._napari import model_input_layer, volume_from_layer_data, volume_layer_data
from ._util import VolumeReadError, is_regular_file
from .dicom import SeriesInfo
from .nifti import write_nifti_volume
from .orientation import acquisition_view, display_from_plane, plane_view
from .preprocess import PUBLISHED_INPUT_SIZE, WINDOW_PRESETS, PreprocessTransform, preprocess_volume
from .reading import list_series, read_volume, read_volumes
from .volume import Volume
from .windows import contrast_limits

__all__ = [
    "PUBLISHED_INPUT_SIZE",
    "WINDOW_PRESETS",
    "PreprocessTransform",
    "SeriesInfo",
    "Volume",
    "VolumeReadError",
    "acquisition_view",
    "contrast_limits",
    "display_from_plane",
    "is_regular_file",
    "list_series",
    "model_input_layer",
    "plane_view",
    "preprocess_volume",
    "read_volume",
    "read_volumes",
    "volume_from_layer_data",
    "volume_layer_data",
    "write_nifti_volume",
]
