"""M3D-Cap and M3D-VQA datasets: the same loaders read the real M3D files and phantom splits.

Images are read as the reference trains on them: a preprocessed volume, ``.npy`` of shape
(1, D, H, W) or (D, H, W) (M3D's original layout) or ``.nii.gz`` / ``.nii`` (Med3DVLM's prepared
layout, read with nibabel), returned as a float tensor (1, D, H, W) with no further resizing or
normalisation. ``.npy`` is read with ``allow_pickle=False``: a data file can never run code.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

VQA_MODES = ("closed", "open", "yn")
CHOICE_COLUMNS = ("Choice A", "Choice B", "Choice C", "Choice D")


def load_image(path) -> torch.Tensor:
    """A preprocessed volume file -> float32 tensor (1, D, H, W)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".npy"):
        array = np.load(path, allow_pickle=False)
    elif name.endswith((".nii.gz", ".nii")):
        import nibabel as nib

        # SimpleITK's GetArrayFromImage (what the reference uses) returns (z, y, x), the reverse
        # of nibabel's (x, y, z) index order.
        array = np.asarray(nib.load(str(path)).dataobj).transpose(2, 1, 0)
    else:
        raise ValueError(f"unsupported image file {path.name!r}: expected .npy, .nii or .nii.gz")
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[0] != 1:
        raise ValueError(f"{path.name}: expected (1, D, H, W) or (D, H, W), got {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array))


def _resolve(root: Path, relative: str, image_suffix: str | None) -> Path:
    if image_suffix and relative.endswith(".npy"):
        relative = relative[: -len(".npy")] + image_suffix
    return root / relative


class _M3DBase(Dataset):
    def __init__(self, root, image_suffix: str | None = None, transform: Callable | None = None):
        self.root = Path(root)
        self.image_suffix = image_suffix
        self.transform = transform

    def _image(self, relative: str, index: int) -> torch.Tensor:
        image = load_image(_resolve(self.root, relative, self.image_suffix))
        if self.transform is not None:
            image = self.transform(image, index)
        return image


class CaptionDataset(_M3DBase):
    """M3D-Cap: ``{"image": (1, D, H, W), "text": report, "image_path": relative path}``.

    ``json_path`` is ``M3D_Cap.json`` (absolute, or relative to ``root``); ``split`` one of its
    keys. ``image_suffix=".nii.gz"`` reads Med3DVLM's prepared volumes from a JSON that still says
    ``.npy``. ``transform(image, index)`` is the augmentation hook. Report text is read as the
    reference prepares it: whitespace collapsed to single spaces.
    """

    def __init__(self, root, json_path="M3D_Cap.json", split: str = "train", image_suffix: str | None = None,
                 transform: Callable | None = None, limit: int | None = None):
        super().__init__(root, image_suffix, transform)
        json_path = Path(json_path)
        if not json_path.is_absolute() and not json_path.exists():
            json_path = self.root / json_path
        with open(json_path, encoding="utf-8") as fh:
            entries = json.load(fh)
        if split not in entries:
            raise KeyError(f"split {split!r} not in {json_path.name}: has {sorted(entries)}")
        self.entries = list(entries[split])[:limit]

    def __len__(self) -> int:
        return len(self.entries)

    def text(self, index: int) -> str:
        raw = (self.root / self.entries[index]["text"]).read_text(encoding="utf-8")
        return " ".join(raw.split())

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        return {"image": self._image(entry["image"], index), "text": self.text(index), "image_path": entry["image"]}


class VQADataset(_M3DBase):
    """M3D-VQA rows: ``{"image", "question", "answer", "question_type", "choices", "answer_choice",
    "mode", "image_path"}``.

    ``mode="closed"`` keeps the four choices for the closed-ended prompt; ``"open"`` and ``"yn"``
    use the answer text. Yes/no rows (``M3D_VQA_yn_*.csv``) have fewer than four choices.
    """

    def __init__(self, root, csv_path, mode: str = "closed", image_suffix: str | None = None,
                 transform: Callable | None = None, limit: int | None = None):
        if mode not in VQA_MODES:
            raise ValueError(f"mode must be one of {VQA_MODES}, got {mode!r}")
        super().__init__(root, image_suffix, transform)
        csv_path = Path(csv_path)
        if not csv_path.is_absolute() and not csv_path.exists():
            csv_path = self.root / csv_path
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = []
            for row in reader:
                rows.append(row)
                if limit is not None and len(rows) >= limit:
                    break
        missing = {"Image Path", "Question", "Answer"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{csv_path.name} lacks columns {sorted(missing)}")
        self.rows = rows
        self.mode = mode

    def __len__(self) -> int:
        return len(self.rows)

    def record(self, index: int) -> dict:
        """The row without its image (cheap: for baselines and metrics)."""
        row = self.rows[index]
        choices = [row.get(c, "") or "" for c in CHOICE_COLUMNS]
        choices = [c for c in choices if c != ""]
        qtype = row.get("Question Type", "")
        return {
            "question": row["Question"],
            "answer": row["Answer"],
            "question_type": int(qtype) if str(qtype).strip().isdigit() else qtype,
            "choices": choices,
            "answer_choice": row.get("Answer Choice", ""),
            "text": row.get("Text", ""),
            "mode": self.mode,
            "image_path": row["Image Path"],
        }

    def __getitem__(self, index: int) -> dict:
        item = self.record(index)
        item["image"] = self._image(item["image_path"], index)
        return item
