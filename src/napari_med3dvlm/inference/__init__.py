"""Running Med3DVLM: model loading, image-feature caching, prompts and streaming generation.

Everything here is GUI-free, so the napari docks and the command line share one code path.
"""

from .backend import engine_for, get_engine, set_engine, use_settings
from .engine import InferenceEngine, ModelUnavailableError
from .export import DISCLAIMER, ReportRecord, VolumeInfo
from .features import EncodedImage, volume_signature
from napari_med3dvlm.settings import InferenceSettings, load_settings, save_settings
from .tasks import Conversation, stream_report

__all__ = [
    "DISCLAIMER",
    "Conversation",
    "EncodedImage",
    "InferenceEngine",
    "InferenceSettings",
    "ModelUnavailableError",
    "ReportRecord",
    "VolumeInfo",
    "engine_for",
    "get_engine",
    "load_settings",
    "save_settings",
    "set_engine",
    "stream_report",
    "use_settings",
    "volume_signature",
]
