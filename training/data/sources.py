"""The preset's ``data`` section -> M3D datasets (`training.data.m3d`), one place for paths and splits."""

from __future__ import annotations

from pathlib import Path


def _path(config: dict, key: str) -> Path:
    """Absolute, so that the loaders (which read a relative path against the root) never join the
    root twice, and an error names the file the preset means."""
    data = config["data"]
    return (Path(data["root"]) / data[key]).absolute()


def caption_dataset(config: dict, split: str = "train", root: str | None = None):
    """M3D-Cap items: ``{"image": (1, D, H, W) float tensor, "text": report}``.

    ``root`` replaces ``data.root`` (a stage may train on a larger copy of the same split).
    """
    from .m3d import CaptionDataset

    data = config["data"]
    if root:
        return CaptionDataset(root, str(Path(root) / data["cap_json"]), split=split)
    return CaptionDataset(data["root"], _path(config, "cap_json"), split=split)


def vqa_dataset(config: dict, split: str = "train", kind: str = "closed"):
    """M3D-VQA items (question, four choices, answer, answer letter); ``yn`` reads the yes/no file."""
    from .m3d import VQADataset

    data = config["data"]
    if kind == "yn":
        csv = _path(config, "vqa_yn_train" if split == "train" else "vqa_yn_test")
        return VQADataset(data["root"], csv, mode="yn")
    csv = _path(config, "vqa_train" if split == "train" else "vqa_test")
    return VQADataset(data["root"], csv, mode=kind)
