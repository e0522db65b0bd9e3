"""Training data: M3D-Cap / M3D-VQA loaders (real data and phantom splits), augmentation, instructions."""

from .m3d import CaptionDataset, VQADataset, load_image

__all__ = ["CaptionDataset", "VQADataset", "load_image"]
