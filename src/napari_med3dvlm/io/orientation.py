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


def stored_from_display(data_zyx: np.ndarray, display_affine: np.ndarray, axcodes):
    """The inverse of `reorient_xyz`: a display-ordered (z, y, x) array (or a map over it) and its
    affine back into the voxel order of a file stored with ``axcodes`` (nibabel's codes, e.g.
    "RAS", as `read_nifti` records them), so that it lines up voxel for voxel with that file.

    Returns the (x, y, z)-indexed array (a view: flips and axis swaps only) and its voxel -> RAS affine.
    """
    array_xyz = np.asarray(data_zyx).transpose(2, 1, 0)
    transform = ornt_transform(axcodes2ornt(DISPLAY_AXCODES), axcodes2ornt(tuple(axcodes)))
    stored = apply_orientation(array_xyz, transform)
    return stored, np.asarray(display_affine, dtype=float) @ inv_ornt_aff(transform, array_xyz.shape)


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


#: Acquisition planes, indexed by the patient axis (0: left-right, 1: front-back, 2: head-feet)
#: that the stored slice axis runs along.
PLANES = ("sagittal", "coronal", "axial")


def stored_slice_plane(affine: np.ndarray, guess_thick_axis: bool = False) -> str:
    """The plane a file's slices were stored in: the direction of its third voxel axis (the NIfTI
    and DICOM convention), or, with `guess_thick_axis`, of an axis whose voxels are clearly
    thicker than the other two (2-D acquisitions written with the slice axis elsewhere)."""
    affine = np.asarray(affine, dtype=float)
    axis = 2
    if guess_thick_axis:
        sizes = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        thick = int(np.argmax(sizes))
        if sizes[thick] > 1.5 * np.delete(sizes, thick).max():
            axis = thick
    return PLANES[int(io_orientation(affine)[axis, 0])]


#: How a plane's slice stack (D, H, W) is read from display axes (z, y, x): stack axis k is display
#: axis perm[k], reversed where flipped[k]. Axial: slices head to feet, as stacks are scrolled;
#: coronal: slices front to back, rows head to feet, columns patient right to left; sagittal:
#: slices right to left, rows head to feet, columns front to back.
PLANE_LAYOUT: dict[str, tuple[tuple[int, int, int], tuple[bool, bool, bool]]] = {
    "axial": ((0, 1, 2), (True, False, False)),
    "coronal": ((1, 0, 2), (False, True, False)),
    "sagittal": ((2, 0, 1), (False, True, False)),
}


def _layout(plane: str):
    try:
        return PLANE_LAYOUT[plane]
    except KeyError:
        raise ValueError(f"unknown plane {plane!r}; expected one of {PLANES}") from None


def _flips(flipped) -> tuple[slice, ...]:
    return tuple(slice(None, None, -1) if f else slice(None) for f in flipped)


def plane_view(data: np.ndarray, plane: str = "axial") -> np.ndarray:
    """(D, H, W) view of a display-ordered (z, y, x) array as slices of `plane` (see
    `acquisition_view`); `display_from_plane` undoes it."""
    perm, flipped = _layout(plane)
    return data.transpose(perm)[_flips(flipped)]


def display_from_plane(array: np.ndarray, plane: str = "axial") -> np.ndarray:
    """Inverse of `plane_view`: a (D, H, W) plane stack (or a map over it) back to (z, y, x)."""
    perm, flipped = _layout(plane)
    return array[_flips(flipped)].transpose(np.argsort(perm))


def stack_spacing(spacing, plane: str = "axial") -> tuple[float, float, float]:
    """The (D, H, W) voxel size of `plane_view` for a display (z, y, x) voxel size."""
    perm, _ = _layout(plane)
    return tuple(float(spacing[axis]) for axis in perm)


def acquisition_view(volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(D, H, W) view of a display-ordered volume as the slices of its acquisition plane
    (``volume.plane``), each slice shown as radiologists read that plane; and its (D, H, W) spacing.

    Med3DVLM was trained on stacks whose first axis is the series' slice index whatever the plane
    (docs/reference-model.md, "Preprocessing"). Slices run head to feet (axial), front to back
    (coronal) or right to left (sagittal); each is shown as radiologists read it: axial anterior-up,
    coronal and sagittal head-up, patient left on the right (axial, coronal), anterior on the left
    (sagittal). The phantom generator renders its training stacks in exactly this layout. No data is
    copied.
    """
    return plane_view(volume.data, volume.plane), stack_spacing(volume.spacing, volume.plane)
