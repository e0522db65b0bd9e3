"""What the DICOM reader passes between its steps: instances already in memory (`InstanceSet`), what
a series picker shows (`SeriesInfo`), and one frame (`_Slice`) and one series (`_Group`) being read."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pydicom


@dataclass(frozen=True)
class InstanceSet:
    """DICOM instances already in memory (a DICOMweb retrieval): they go through the same grouping,
    ordering, geometry and rescale as files. ``items`` are (name, pydicom Dataset) pairs; names
    appear in messages, so they must not identify the patient (use "instance 12", not a UID).
    ``label`` names the whole set in messages, ``key`` is a stable identity for `source_hash`."""

    items: tuple
    label: str
    key: str
    server: str = ""


@dataclass(frozen=True)
class SeriesInfo:
    """What a series picker shows. `uid_hash` is a short hash, never the UID itself."""

    uid_hash: str
    description: str
    modality: str
    n_slices: int
    shape: tuple[int, int, int]  # (z, y, x) after reorientation to display order


@dataclass
class _Slice:
    """One 2-D frame: where it is, how to rescale it, and how to get its pixels."""

    source: object  # a Path on disk or the bytes of a zip member
    name: str
    header: pydicom.Dataset
    frame: int | None
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float]
    thickness: float | None
    slope: float
    intercept: float
    window: tuple[float, float] | None
    instance: int
    shape: tuple[int, int] = (0, 0)  # (Rows, Columns)


@dataclass
class _Group:
    key: tuple
    slices: list[_Slice] = field(default_factory=list)
    description: str = ""
    modality: str = ""
    uid_hash: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return self.slices[0].shape
