"""The in-memory volume every reader returns and every consumer takes.

Arrays are (z, y, x) in the modality's native units (HU for CT). Spacing is (z, y, x) in mm.
No patient identifiers are ever stored here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Volume:
    data: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    affine: np.ndarray | None = None  # 4x4 voxel (x, y, z index order as in NIfTI) -> RAS+ mm
    modality: str = "CT"
    window: tuple[float, float] | None = None  # (center, width) from the file, if any
    description: str = ""
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.data.ndim != 3:
            raise ValueError(f"a volume must be 3-D (z, y, x); got shape {self.data.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)
