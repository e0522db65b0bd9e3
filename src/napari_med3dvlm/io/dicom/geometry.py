"""Geometry of a series: slices ordered along their normal, spaced by their positions, and the
voxel-to-patient (LPS) affine."""

from __future__ import annotations

import numpy as np

from ..orientation import lps_to_ras, reorient_xyz
from .records import _Group


def _sorted_geometry(group: _Group):
    """Order slices along the normal; return (slices, voxel->LPS affine, uniform?, notes)."""
    slices = group.slices
    notes = []
    first = slices[0]
    orientation = first.orientation
    if orientation is None:
        orientation = np.array([1.0, 0, 0, 0, 1.0, 0])
        notes.append("no ImageOrientationPatient: assumed axial")
    row_cos, col_cos = orientation[:3], orientation[3:]
    normal = np.cross(row_cos, col_cos)
    uniform = True
    if all(s.position is not None for s in slices) and len(slices) > 1:
        distances = np.array([float(np.dot(normal, s.position)) for s in slices])
        order = np.argsort(distances, kind="stable")
        slices = [slices[i] for i in order]
        distances = distances[order]
        steps = np.diff(distances)
        duplicate = steps < 1e-4
        if duplicate.any():
            keep = np.concatenate([[True], ~duplicate])
            notes.append(f"{int(duplicate.sum())} slices share a position with another; kept the first")
            slices = [s for s, k in zip(slices, keep) if k]
            distances = distances[keep]
            steps = np.diff(distances)
        dz = float(np.median(steps)) if steps.size else (first.thickness or 1.0)
        if steps.size and np.abs(steps - dz).max() > max(0.01 * dz, 1e-3):
            uniform = False
            notes.append(
                f"slice spacing varies from {steps.min():.3f} to {steps.max():.3f} mm; "
                f"shown with the median {dz:.3f} mm"
            )
        origin = slices[0].position
        offsets = np.array([s.position - origin for s in slices])
        sideways = offsets - np.outer(offsets @ normal, normal)
        if np.abs(sideways).max() > 0.5 * min(first.pixel_spacing):
            notes.append("slice positions drift sideways (gantry tilt?); shown without shear correction")
    else:
        if len(slices) > 1:
            slices = sorted(slices, key=lambda s: s.instance)
            notes.append("no slice positions: ordered by instance number")
        dz = first.thickness or 1.0
        origin = first.position if first.position is not None else np.zeros(3)
    row_spacing, col_spacing = first.pixel_spacing
    affine = np.eye(4)
    affine[:3, 0] = row_cos * col_spacing  # along a row: x, the column index
    affine[:3, 1] = col_cos * row_spacing  # down a column: y, the row index
    affine[:3, 2] = normal * dz
    affine[:3, 3] = origin
    return slices, affine, uniform, notes


def _display_shape(n, rows, cols, affine_lps) -> tuple[int, int, int]:
    dummy = np.broadcast_to(np.zeros((), dtype=np.uint8), (cols, rows, n))
    data, _ = reorient_xyz(dummy, lps_to_ras(affine_lps))
    return tuple(int(s) for s in data.shape)
