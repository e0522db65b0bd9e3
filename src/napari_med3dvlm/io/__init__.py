"""Volumes in and out: NIfTI and DICOM reading, display windows, and model preprocessing."""

from .preprocess import PUBLISHED_INPUT_SIZE, WINDOW_PRESETS, PreprocessTransform, preprocess_volume
from .volume import Volume

__all__ = ["PUBLISHED_INPUT_SIZE", "WINDOW_PRESETS", "PreprocessTransform", "Volume", "preprocess_volume"]
