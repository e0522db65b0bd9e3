"""napari docks. Layout and layer handling only: the model work lives in `napari_med3dvlm.inference`."""

from .chat import ChatWidget
from .report import ReportWidget
from .settings import SettingsWidget
from .volume import VolumeWidget

__all__ = ["ChatWidget", "ReportWidget", "SettingsWidget", "VolumeWidget"]
