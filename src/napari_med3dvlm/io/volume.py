"""The in-memory volume every reader returns and every consumer takes.

Arrays are (z, y, x) in the modality's native units (HU for CT). Spacing is (z, y, x) in mm.
The acquisition plane is part of the volume: the model reads a display-ordered array as the slice
stack of that plane (`orientation.plane_view`), so every reader sets it.
No patient identifiers are ever stored here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np

#: The plane a series was acquired in (its slices' orientation).
Plane = Literal["axial", "coronal", "sagittal"]
PLANE_NAMES: tuple[str, ...] = get_args(Plane)


@dataclass
class DicomSource:
    """Where a DICOM volume came from, kept for writing results back beside it (a DICOM SR in the
    source's study, stored on the server it came from).

    ``headers`` are the source instances' datasets without pixel data, in slice order (one per
    instance): they hold the patient and study modules, so they identify the patient. They are
    never exported, logged or shown; only the DICOM SR writer copies from them, as the standard
    requires for a report filed with its study.
    """

    study_uid: str
    series_uid: str
    headers: list = field(default_factory=list, repr=False)
    #: The DICOMweb service the series was retrieved from ('' for files), without credentials.
    server: str = ""


@dataclass
class Volume:
    data: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    affine: np.ndarray | None = None  # 4x4 voxel (x, y, z index order as in NIfTI) -> RAS+ mm
    modality: str = "CT"
    #: (center, width) from the file, if any; a caller may set a preset name for the model instead
    window: tuple[float, float] | str | None = None
    description: str = ""
    metadata: dict = field(default_factory=dict)
    plane: Plane = "axial"  # acquisition plane of the display-ordered data
    #: DICOM sources only: study and series UIDs and the source headers (see `DicomSource`)
    dicom: DicomSource | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.data.ndim != 3:
            raise ValueError(f"a volume must be 3-D (z, y, x); got shape {self.data.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        if self.plane not in PLANE_NAMES:
            raise ValueError(f"unknown plane {self.plane!r}; expected one of {PLANE_NAMES}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)
