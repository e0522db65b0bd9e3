"""Rendering a `PhantomCase` into a CT-like volume in HU.

The canvas is built in canonical (z, y, x) order with the slice (stack) axis coarse, as a clinical
reconstruction of that plane would be. Canonical z runs head to feet, y front to back and x to the
patient's left: the plugin's display order (`napari_med3dvlm.io.orientation`) with z reversed. The
acquisition stack is that canvas transposed so that axis 0 is the slice axis, as M3D stores its
series, by the one plane table `io.orientation.PLANE_LAYOUT`: axial (z, y, x), coronal (y, z, x),
sagittal (x, z, y). Partial-volume blur and quantum noise are added before rounding to integer HU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..io import Volume
from ..io.orientation import PLANE_LAYOUT, affine_from_scale_translate, display_from_plane
from .anatomy import BUILDERS, FOV_MM
from .case import PhantomCase
from .geometry import Canvas, Grid
from .lesions import paint_findings
from .sampling import sample_case

#: Default native grid: slices along the stack axis, pixels in-plane.
NATIVE_SLICES = 48
NATIVE_PIXELS = 128
#: Image noise (standard deviation in HU) per region: thicker, lower-noise head reconstructions.
NOISE_HU = {"head": 4.0, "chest": 10.0, "abdomen": 10.0}



def stack_axes(plane: str) -> tuple[int, int, int]:
    """The canonical (= display) axis (z=0, y=1, x=2) each stack axis runs along, from the plane table
    of `io.orientation`; the stack's flips there are exactly canonical z's (head to feet)."""
    return PLANE_LAYOUT[plane][0]


@dataclass
class PhantomImage:
    """A rendered case, in the two orders it is used in.

    ``stack`` is the acquisition stack (slice axis first, slices of ``case.plane`` laid out as
    `io.orientation.plane_view` reads them), what the training files hold and the model is trained
    on; ``volume`` is the same pixels as the plugin's readers return a file: display order, its
    acquisition plane, origin and affine, the `Volume` that `napari_med3dvlm.io.model_input` takes.
    The label maps are on the stack's grid (`display_finding_labels` puts one in display order)."""

    case: PhantomCase
    stack: np.ndarray  # int16 HU, (slice, row, column)
    stack_spacing: tuple[float, float, float]  # mm, (slice, row, column)
    stack_affine: np.ndarray  # stack index (slice, row, column) -> RAS+ mm, as the NIfTI files store it
    volume: Volume  # display (z, y, x) order, plane = case.plane
    organ_labels: np.ndarray  # uint8, same shape as stack (see anatomy.LABEL)
    finding_labels: np.ndarray  # uint8: finding index + 1, 0 elsewhere

    def nifti_array_and_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(column, row, slice)-indexed array and its voxel -> RAS+ affine: slices on NIfTI's
        third axis, as scanners write them, so readers recognise the acquisition plane."""
        data = self.stack.transpose(2, 1, 0)
        affine = np.asarray(self.stack_affine)[:, [2, 1, 0, 3]]
        return data, affine

    def nifti_labels_and_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """The lesion label map (finding index + 1, 0 elsewhere) on the grid of
        `nifti_array_and_affine`: same shape, same affine."""
        _, affine = self.nifti_array_and_affine()
        return np.ascontiguousarray(self.finding_labels.transpose(2, 1, 0)), affine

    def display_finding_labels(self) -> np.ndarray:
        """`finding_labels` in the display order of `volume` (same shape as its data)."""
        return np.ascontiguousarray(display_from_plane(self.finding_labels, self.case.plane))


def _display_volume(case: PhantomCase, stack: np.ndarray, spacing, canonical_origin) -> Volume:
    """The stack in `napari_med3dvlm.io` display order (z to Superior, y to Posterior, x to Left)
    with its acquisition plane recorded, as the readers return files. ``spacing`` is the stack's,
    ``canonical_origin`` the (z, y, x) mm of canonical voxel (0, 0, 0)."""
    data = np.ascontiguousarray(display_from_plane(stack, case.plane))
    sz, sy, sx = _canonical_spacing(spacing, case.plane)
    last_z = canonical_origin[0] + (data.shape[0] - 1) * sz
    translate = (-last_z, canonical_origin[1], canonical_origin[2])  # LPS: S = -z, P = y, L = x
    return Volume(
        data=data,
        spacing=(sz, sy, sx),
        origin=translate,
        affine=affine_from_scale_translate((sz, sy, sx), translate),
        modality="CT",
        window=None,
        description=f"phantom {case.region} {case.phase} {case.plane}",
        metadata={"phantom": case.to_dict()},
        plane=case.plane,
    )


def _canonical_spacing(stack_spacing, plane: str) -> tuple[float, float, float]:
    canonical = [0.0, 0.0, 0.0]
    for i, axis in enumerate(stack_axes(plane)):
        canonical[axis] = float(stack_spacing[i])
    return tuple(canonical)


def canonical_shape(plane: str, slices: int = NATIVE_SLICES, pixels: int = NATIVE_PIXELS) -> tuple[int, int, int]:
    shape = [pixels, pixels, pixels]
    shape[stack_axes(plane)[0]] = slices
    return tuple(shape)


def _affine(grid: Grid, axes: tuple[int, int, int]) -> np.ndarray:
    """Voxel (stack-order array index i, j, k) -> RAS+ mm.

    Canonical z runs to the feet, y to the back and x to the patient's left, so each is the
    negative of RAS's S, A and R axes."""
    coords = (grid.z, grid.y, grid.x)
    ras_column = {0: 2, 1: 1, 2: 0}  # canonical axis -> RAS row (z->S, y->A, x->R)
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for i, axis in enumerate(axes):
        c = coords[axis]
        step = float(c[1] - c[0])
        affine[ras_column[axis], i] = -step
        affine[ras_column[axis], 3] = -float(c[0])
    return affine


def render_case(case: PhantomCase, slices: int = NATIVE_SLICES, pixels: int = NATIVE_PIXELS,
                noise_hu: float | None = None) -> PhantomImage:
    """Paint, blur, add noise and reorder to the acquisition plane. Deterministic for a case."""
    shape = canonical_shape(case.plane, slices, pixels)
    grid = Grid.centred(shape, FOV_MM[case.region])
    canvas = Canvas(grid)
    BUILDERS[case.region](canvas, case)
    rng = np.random.default_rng(case.seed + 1)
    paint_findings(canvas, case, rng)

    spacing = np.asarray(grid.spacing)
    # partial volume: ~1 mm in-plane point spread plus the slice profile along the stack axis
    sigma = np.clip(np.where(np.arange(3) == stack_axes(case.plane)[0], 0.35, 1.1 / spacing), 0.3, 1.0)
    hu = ndimage.gaussian_filter(canvas.hu, sigma=sigma, mode="nearest", truncate=2.5)
    if noise_hu is None:
        noise_hu = NOISE_HU[case.region]
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    body = canvas.organ > 0
    hu += noise * np.float32(noise_hu) * body + noise * np.float32(3.0) * ~body
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    axes = stack_axes(case.plane)
    stack = np.ascontiguousarray(hu.transpose(axes))
    stack_spacing = tuple(round(float(spacing[a]), 5) for a in axes)
    canonical_origin = (float(grid.z[0]), float(grid.y[0]), float(grid.x[0]))
    return PhantomImage(
        case=case,
        stack=stack,
        stack_spacing=stack_spacing,
        stack_affine=_affine(grid, axes),
        volume=_display_volume(case, stack, stack_spacing, canonical_origin),
        organ_labels=np.ascontiguousarray(canvas.organ.transpose(axes)),
        finding_labels=np.ascontiguousarray(canvas.finding.transpose(axes)),
    )


def generate(seed: int, **kwargs) -> PhantomImage:
    """Sample a case from ``seed`` and render it."""
    return render_case(sample_case(seed), **kwargs)
