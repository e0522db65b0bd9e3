"""Rendering a `PhantomCase` into a CT-like volume in HU.

The canvas is built in canonical (z, y, x) order with the slice (stack) axis coarse, as a clinical
reconstruction of that plane would be, then transposed so that axis 0 is the stack, as M3D stores
its series: axial (z, y, x), coronal (y, z, x), sagittal (x, z, y). Partial-volume blur and
quantum noise are added before rounding to integer HU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..io import Volume
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

#: Canonical axis order (z=0, y=1, x=2) of the stack-order array, per plane.
PLANE_AXES = {"axial": (0, 1, 2), "coronal": (1, 0, 2), "sagittal": (2, 0, 1)}


@dataclass
class PhantomImage:
    """A rendered case. ``volume.data`` is the acquisition stack (slice axis first), what the model
    is trained on (its plane is ``case.plane``); `display_volume` is the same pixels in the plugin's
    display orientation, the `Volume` that `napari_med3dvlm.io.model_input` takes."""

    case: PhantomCase
    volume: Volume  # HU, stack order; affine maps (slice, row, column) indices to RAS+ mm
    organ_labels: np.ndarray  # uint8, same shape as volume.data (see anatomy.LABEL)
    finding_labels: np.ndarray  # uint8: finding index + 1, 0 elsewhere

    def nifti_array_and_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(column, row, slice)-indexed array and its voxel -> RAS+ affine: slices on NIfTI's
        third axis, as scanners write them, so readers recognise the acquisition plane."""
        data = self.volume.data.transpose(2, 1, 0)
        affine = np.asarray(self.volume.affine)[:, [2, 1, 0, 3]]
        return data, affine

    def nifti_labels_and_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """The lesion label map (finding index + 1, 0 elsewhere) on the grid of
        `nifti_array_and_affine`: same shape, same affine."""
        _, affine = self.nifti_array_and_affine()
        return np.ascontiguousarray(self.finding_labels.transpose(2, 1, 0)), affine

    def display_finding_labels(self) -> np.ndarray:
        """`finding_labels` in the display order of `display_volume` (same shape as its data)."""
        from ..io.orientation import display_from_plane

        return np.ascontiguousarray(display_from_plane(self.finding_labels, self.case.plane))

    def display_volume(self) -> Volume:
        """The volume in `napari_med3dvlm.io` display order (z to Superior, y to Posterior, x to
        Left) with its acquisition plane recorded, as the readers return files."""
        from ..io.orientation import affine_from_scale_translate, display_from_plane

        data = np.ascontiguousarray(display_from_plane(self.volume.data, self.case.plane))
        sz, sy, sx = _canonical_spacing(self.volume.spacing, self.case.plane)
        origin = self.volume.metadata["canonical_origin"]  # (z, y, x) mm of canonical voxel (0, 0, 0)
        last_z = origin[0] + (data.shape[0] - 1) * sz
        translate = (-last_z, origin[1], origin[2])  # LPS: S = -z, P = y, L = x
        return Volume(
            data=data,
            spacing=(sz, sy, sx),
            origin=translate,
            affine=affine_from_scale_translate((sz, sy, sx), translate),
            modality="CT",
            window=None,
            description=self.volume.description,
            metadata={"phantom": self.case.to_dict()},
            plane=self.case.plane,
        )


def _canonical_spacing(stack_spacing, plane: str) -> tuple[float, float, float]:
    axes = PLANE_AXES[plane]
    canonical = [0.0, 0.0, 0.0]
    for i, axis in enumerate(axes):
        canonical[axis] = float(stack_spacing[i])
    return tuple(canonical)


def canonical_shape(plane: str, slices: int = NATIVE_SLICES, pixels: int = NATIVE_PIXELS) -> tuple[int, int, int]:
    shape = [pixels, pixels, pixels]
    shape[PLANE_AXES[plane][0]] = slices
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
    sigma = np.clip(np.where(np.arange(3) == PLANE_AXES[case.plane][0], 0.35, 1.1 / spacing), 0.3, 1.0)
    hu = ndimage.gaussian_filter(canvas.hu, sigma=sigma, mode="nearest", truncate=2.5)
    if noise_hu is None:
        noise_hu = NOISE_HU[case.region]
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    body = canvas.organ > 0
    hu += noise * np.float32(noise_hu) * body + noise * np.float32(3.0) * ~body
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    axes = PLANE_AXES[case.plane]
    data = np.ascontiguousarray(hu.transpose(axes))
    volume = Volume(
        data=data,
        spacing=tuple(round(float(spacing[a]), 5) for a in axes),
        affine=_affine(grid, axes),
        modality="CT",
        window=None,
        description=f"phantom {case.region} {case.phase} {case.plane}",
        metadata={"phantom": case.to_dict(),
                  "canonical_origin": (float(grid.z[0]), float(grid.y[0]), float(grid.x[0]))},
    )
    return PhantomImage(
        case=case,
        volume=volume,
        organ_labels=np.ascontiguousarray(canvas.organ.transpose(axes)),
        finding_labels=np.ascontiguousarray(canvas.finding.transpose(axes)),
    )


def generate(seed: int, **kwargs) -> PhantomImage:
    """Sample a case from ``seed`` and render it."""
    return render_case(sample_case(seed), **kwargs)
