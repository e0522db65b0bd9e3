"""One display orientation for every volume, whatever the file stored.

Arrays are indexed (z, y, x) with x increasing toward the patient's Left, y toward Posterior and z
toward Superior (DICOM's LPS). Shown in napari, an axial slice then has anterior at the top and the
patient's left on the screen's right, as radiologists read it, and the slider runs feet to head.

Only flips and axis swaps are applied (nibabel's closest-canonical logic), so the result is a view
of the stored array, never a resampled copy. Oblique acquisitions keep their exact geometry in the
affine; napari's scale/translate then describe the nearest axis-aligned frame.
"""

from __future__ import annotations

import numpy as np
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

#: Where voxel axes (x, y, z) point, in nibabel's axis-code convention.
DISPLAY_AXCODES = ("L", "P", "S")

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def reorient_xyz(array_xyz: np.ndarray, affine: np.ndarray):
    """Flip/permute an (x, y, z)-indexed array and its voxel->RAS affine into display order.

    Returns the (z, y, x) view and the affine of that view (still indexed x, y, z -> RAS mm).
    """
    affine = np.asarray(affine, dtype=float)
    current = io_orientation(affine)
    transform = ornt_transform(current, axcodes2ornt(DISPLAY_AXCODES))
    reoriented = apply_orientation(array_xyz, transform)
    new_affine = affine @ inv_ornt_aff(transform, array_xyz.shape[:3])
    return reoriented.transpose(2, 1, 0), new_affine


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (z, y, x) in mm: the lengths of the affine's columns."""
    sizes = np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))
    return tuple(float(s) for s in sizes[::-1])


def origin_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Position of voxel (0, 0, 0) in LPS mm, ordered (z, y, x) = (S, P, L) like napari's axes."""
    lps = _RAS_TO_LPS @ np.asarray(affine, dtype=float)[:, 3]
    return tuple(float(v) for v in lps[:3][::-1])


def affine_from_scale_translate(scale, translate) -> np.ndarray:
    """Voxel (x, y, z) -> RAS affine for a display-ordered (z, y, x) layer with napari scale/translate."""
    sz, sy, sx = (float(s) for s in scale)
    tz, ty, tx = (float(t) for t in translate)
    lps = np.array(
        [[sx, 0, 0, tx], [0, sy, 0, ty], [0, 0, sz, tz], [0, 0, 0, 1]],
        dtype=float,
    )
    return _RAS_TO_LPS @ lps


def lps_to_ras(affine_lps: np.ndarray) -> np.ndarray:
    """Turn a voxel -> LPS affine (DICOM's frame) into voxel -> RAS (NIfTI's frame)."""
    return _RAS_TO_LPS @ np.asarray(affine_lps, dtype=float)
