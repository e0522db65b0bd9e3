"""Painting simple solids onto an axis-aligned mm grid, touching only each solid's bounding box.

A phantom is a few dozen ellipsoids, shells and cylinders; evaluating each one over the whole
volume would cost most of the generation time, so every primitive works on the index box that
contains it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Grid:
    """Voxel-centre coordinates in mm along canonical axes (z: head->feet, y: front->back,
    x: patient right->left), one 1-D vector per axis."""

    z: np.ndarray
    y: np.ndarray
    x: np.ndarray

    @classmethod
    def centred(cls, shape, fov_mm) -> "Grid":
        axes = []
        for n, fov in zip(shape, fov_mm):
            step = fov / n
            axes.append(((np.arange(n, dtype=np.float32) + 0.5) * step - fov / 2).astype(np.float32))
        return cls(*axes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.z.size, self.y.size, self.x.size)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(a[1] - a[0]) if a.size > 1 else 1.0 for a in (self.z, self.y, self.x))


def _axis_slice(coords: np.ndarray, low: float, high: float) -> slice:
    start = int(np.searchsorted(coords, low, side="left"))
    stop = int(np.searchsorted(coords, high, side="right"))
    return slice(start, max(start, stop))


def ellipsoid_field(grid: Grid, center, radii, zlim=None):
    """(index box, normalised radius r) of an axis-aligned ellipsoid; r <= 1 is inside.

    ``zlim`` optionally clips the box along z (cylinders are long ellipsoids cut to a z range).
    """
    cz, cy, cx = center
    rz, ry, rx = radii
    zlo, zhi = cz - rz, cz + rz
    if zlim is not None:
        zlo, zhi = max(zlo, zlim[0]), min(zhi, zlim[1])
    box = (
        _axis_slice(grid.z, zlo, zhi),
        _axis_slice(grid.y, cy - ry, cy + ry),
        _axis_slice(grid.x, cx - rx, cx + rx),
    )
    dz = ((grid.z[box[0]] - cz) / rz)[:, None, None]
    dy = ((grid.y[box[1]] - cy) / ry)[None, :, None]
    dx = ((grid.x[box[2]] - cx) / rx)[None, None, :]
    r = np.sqrt(dz * dz + dy * dy + dx * dx)
    return box, r


def cylinder_field(grid: Grid, center_yx, radius_yx, zlim):
    """(index box, normalised radius) of a z-aligned elliptic cylinder between zlim[0] and zlim[1]."""
    cy, cx = center_yx
    ry, rx = radius_yx
    box = (
        _axis_slice(grid.z, zlim[0], zlim[1]),
        _axis_slice(grid.y, cy - ry, cy + ry),
        _axis_slice(grid.x, cx - rx, cx + rx),
    )
    dy = ((grid.y[box[1]] - cy) / ry)[:, None]
    dx = ((grid.x[box[2]] - cx) / rx)[None, :]
    r2d = np.sqrt(dy * dy + dx * dx)
    nz = box[0].stop - box[0].start
    r = np.broadcast_to(r2d[None], (nz,) + r2d.shape)
    return box, r


class Canvas:
    """An HU volume plus organ labels, painted back to front like a painter's algorithm."""

    def __init__(self, grid: Grid, background: float = -1000.0):
        self.grid = grid
        self.hu = np.full(grid.shape, background, dtype=np.float32)
        self.organ = np.zeros(grid.shape, dtype=np.uint8)
        self.finding = np.zeros(grid.shape, dtype=np.uint8)

    def paint(self, box, inside: np.ndarray, value: float, organ: int | None = None,
              finding: int | None = None, within=None, protect_findings: bool = False) -> int:
        """Set ``value`` where ``inside``; ``within`` (a label or a tuple of labels) restricts painting
        to those organ labels (a lesion stays inside its organ). Returns the number of voxels painted."""
        if within is not None:
            labels = self.organ[box]
            if isinstance(within, int):
                inside = inside & (labels == within)
            else:
                inside = inside & np.isin(labels, within)
        if protect_findings:  # fluid settles around lesions, it does not paint over them
            inside = inside & (self.finding[box] == 0)
        if not inside.any():
            return 0
        self.hu[box][inside] = value
        if organ is not None:
            self.organ[box][inside] = organ
        if finding is not None:
            self.finding[box][inside] = finding
        return int(inside.sum())

    def ellipsoid(self, center, radii, value, organ=None, finding=None, within=None, zlim=None,
                  protect_findings: bool = False) -> int:
        box, r = ellipsoid_field(self.grid, center, radii, zlim)
        return self.paint(box, r <= 1.0, value, organ, finding, within, protect_findings)

    def fraction_inside(self, center, radii, labels) -> float:
        """Share of an ellipsoid's expected voxels that fall on ``labels`` and on no finding yet
        (0 when it leaves the field of view or its organ)."""
        box, r = ellipsoid_field(self.grid, center, radii)
        inside = r <= 1.0
        expected = 4.0 / 3.0 * np.pi * float(np.prod(radii)) / float(np.prod(self.grid.spacing))
        if not inside.any():
            return 0.0
        ok = np.isin(self.organ[box][inside], labels) & (self.finding[box][inside] == 0)
        return float(ok.sum()) / max(expected, float(inside.sum()))

    def shell(self, center, radii, thickness_mm, value, organ=None, zlim=None) -> int:
        """Ellipsoidal shell of roughly constant thickness (skull, chest wall)."""
        box, r = ellipsoid_field(self.grid, center, radii, zlim)
        inner = 1.0 - thickness_mm / float(min(radii))
        return self.paint(box, (r <= 1.0) & (r > inner), value, organ)

    def cylinder(self, center_yx, radius_yx, zlim, value, organ=None, finding=None, within=None) -> int:
        box, r = cylinder_field(self.grid, center_yx, radius_yx, zlim)
        return self.paint(box, r <= 1.0, value, organ, finding, within)
