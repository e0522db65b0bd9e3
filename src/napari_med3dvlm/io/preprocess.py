"""The one preprocessing path from a volume to model input, shared by inference, retrieval and
training (so the model sees at run time exactly what it was trained on).

Med3DVLM was trained on display-windowed 8-bit slices scaled to [0, 1], foreground-cropped and
trilinearly resized (docs/reference-model.md, "Preprocessing"). So: window (CT) or percentile scaling (MR) to [0, 1],
min-max, crop to voxels > 0, resize, and add batch and channel axes: (B, 1, D, H, W).
The training stacks put the series' slice axis first whatever the plane, so a display-ordered
(z, y, x) layer is first viewed as the slice stack of its acquisition plane (``plane=``).

`model_input` is the entry point for a `Volume` (its plane and modality come with it); every caller
with a volume uses it. `preprocess_volume` is the array-level step underneath, also called directly on
arrays that are already slice stacks in the training layout.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ._util import VolumeReadError
from .orientation import PLANE_LAYOUT, display_from_plane, plane_view

#: Display windows as (center, width) in HU.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}

#: The published model's input size (D, H, W).
PUBLISHED_INPUT_SIZE = (128, 256, 256)

@dataclass(frozen=True)
class PreprocessTransform:
    """What was done to a volume, so model-space results can be mapped back onto the layer."""

    input_shape: tuple[int, int, int]
    crop_start: tuple[int, int, int]
    crop_stop: tuple[int, int, int]
    output_shape: tuple[int, int, int]
    intensity: str  # "window" or "percentile"
    low: float
    high: float
    plane: str | None = None  # the input was a display-ordered layer viewed as this plane's stack

    @property
    def zoom(self) -> tuple[float, float, float]:
        """Model voxels per cropped input voxel, per axis."""
        return tuple(
            o / (b - a) for o, a, b in zip(self.output_shape, self.crop_start, self.crop_stop)
        )

    def to_input_index(self, model_index) -> np.ndarray:
        """Map (z, y, x) model-voxel coordinates (voxel centres) to input-voxel coordinates."""
        idx = np.asarray(model_index, dtype=float)
        zoom = np.asarray(self.zoom)
        return (idx + 0.5) / zoom - 0.5 + np.asarray(self.crop_start)

    def layer_scale_translate(self, scale=(1.0, 1.0, 1.0), translate=(0.0, 0.0, 0.0)):
        """napari scale/translate that overlays the model input (after `to_display`) on the
        original layer."""
        scale = np.asarray(scale, dtype=float)
        translate = np.asarray(translate, dtype=float)
        perm, flipped = PLANE_LAYOUT[self.plane] if self.plane else ((0, 1, 2), (False, False, False))
        new_scale, new_translate = np.empty(3), np.empty(3)
        for k, axis in enumerate(perm):
            n, start, stop = self.input_shape[k], self.crop_start[k], self.crop_stop[k]
            if flipped[k]:
                start, stop = n - stop, n - start
            zoom = self.output_shape[k] / (stop - start)
            new_scale[axis] = scale[axis] / zoom
            new_translate[axis] = translate[axis] + (0.5 / zoom - 0.5 + start) * scale[axis]
        return tuple(new_scale), tuple(new_translate)

    def to_display(self, array: np.ndarray) -> np.ndarray:
        """A model-space (D, H, W) array in the display order of the layer it came from."""
        if not self.plane:
            return array
        return display_from_plane(array, self.plane)

    def to_dict(self) -> dict:
        return asdict(self)


def intensity_range(
    data: np.ndarray,
    modality: str = "CT",
    window: tuple[float, float] | str | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> tuple[str, float, float]:
    """The (low, high) intensities mapped to 0 and 1.

    CT uses a display window (a preset name or (center, width); soft tissue by default). Other
    modalities have no absolute scale, so robust percentiles of the non-zero voxels are used unless a
    window is given.
    """
    if isinstance(window, str):
        if window not in WINDOW_PRESETS:
            raise ValueError(f"unknown window preset {window!r}; choose from {sorted(WINDOW_PRESETS)}")
        window = WINDOW_PRESETS[window]
    if window is None and modality.upper() == "CT":
        window = WINDOW_PRESETS["soft tissue"]
    if window is not None:
        center, width = float(window[0]), float(window[1])
        if width <= 0:
            raise ValueError(f"window width must be positive, got {width}")
        return "window", center - width / 2.0, center + width / 2.0
    sample = data[:: max(1, data.shape[0] // 64)]
    finite = sample[np.isfinite(sample)]
    nonzero = finite[finite != 0]
    values = nonzero if nonzero.size else finite
    if values.size == 0:
        return "percentile", 0.0, 1.0
    low, high = np.percentile(values, percentiles)
    return "percentile", float(low), float(high)


def foreground_box(volume: np.ndarray, threshold: float = 0.0):
    """Bounding box of voxels above threshold (MONAI CropForeground with margin 0)."""
    mask = volume > threshold
    if not mask.any():
        return (0, 0, 0), tuple(volume.shape)
    start, stop = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        start.append(int(hit[0]))
        stop.append(int(hit[-1]) + 1)
    return tuple(start), tuple(stop)


_TORCH_COMPARABLE = tuple(np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.int32, np.int64))


def _positive_view(data: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """``data`` with every reversed axis flipped back (a view torch can share) and those axes."""
    flipped = tuple(axis for axis in range(data.ndim) if data.strides[axis] < 0)
    return (np.flip(data, flipped) if flipped else data), flipped


def _box_from_mask(mask: torch.Tensor, flipped, shape):
    """`foreground_box` of a boolean tensor over the flipped-back view, in ``data``'s own index order."""
    if not bool(mask.any()):
        return (0, 0, 0), tuple(int(n) for n in shape)
    start, stop = [], []
    for axis in range(3):
        hit = mask
        for other in sorted((a for a in range(3) if a != axis), reverse=True):
            hit = hit.any(dim=other)
        index = torch.nonzero(hit).flatten()
        a, b = int(index[0]), int(index[-1]) + 1
        if axis in flipped:
            a, b = shape[axis] - b, shape[axis] - a
        start.append(a)
        stop.append(b)
    return tuple(start), tuple(stop)


def _window(values: torch.Tensor, low: np.float32, width: np.float32) -> torch.Tensor:
    """In place: ``clip((values - low) / width, 0, 1)`` in float32."""
    return values.sub_(float(low)).div_(float(width)).clamp_(0.0, 1.0)


def _scaled_crop(data: np.ndarray, low: float, high: float, crop_foreground: bool):
    """(1, 1, d, h, w) float32 tensor of the intensity-scaled, min-max normalised foreground crop.

    Same values as scaling the whole volume and then cropping, with less work and memory: integer
    volumes (no NaN or infinity) are cropped first, on a threshold found in their own dtype, so only
    the crop is ever converted to float32; every step after the conversion runs in place.
    """
    low32 = np.float32(low)
    width32 = np.float32(max(high - low, 1e-6))
    shape = tuple(int(n) for n in data.shape)
    if data.dtype == np.bool_:
        data = data.view(np.uint8)
    if np.issubdtype(data.dtype, np.integer):
        lowest, highest = int(data.min()), int(data.max())

        def scaled(value: int) -> np.float32:  # the float32 arithmetic of the crop below, for one value
            one = torch.from_numpy(np.array([value], dtype=data.dtype).astype(np.float32))
            return np.float32(_window(one, low32, width32)[0])

        vmin, vmax = scaled(lowest), scaled(highest)
        start, stop = (0, 0, 0), shape
        if crop_foreground and vmax != vmin:
            # scaling is monotone, so "above the minimum after scaling" is "above t" for one integer t
            lo, hi = lowest, highest
            while hi - lo > 1:  # invariant: scaled(lo) == vmin < scaled(hi)
                mid = (lo + hi) // 2
                if scaled(mid) == vmin:
                    lo = mid
                else:
                    hi = mid
            view, flipped = _positive_view(data)
            if view.dtype in _TORCH_COMPARABLE:
                mask = torch.from_numpy(view) > lo
            else:
                mask = torch.from_numpy(view > view.dtype.type(lo))
            start, stop = _box_from_mask(mask, flipped, shape)
            del mask
        region = data[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]]
        work = torch.from_numpy(np.array(region, dtype=np.float32, order="C"))
        _window(work, low32, width32)
    else:
        work = torch.from_numpy(np.array(data, dtype=np.float32, order="C"))
        work.nan_to_num_(nan=float(low32), posinf=float(np.float32(high)), neginf=float(low32))
        _window(work, low32, width32)
        lowest_high = torch.aminmax(work)
        vmin, vmax = np.float32(lowest_high.min), np.float32(lowest_high.max)
        if crop_foreground:
            start, stop = _box_from_mask(work > float(vmin), (), shape)
        else:
            start, stop = (0, 0, 0), shape
        work = work[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]]
    work.sub_(float(vmin)).div_(float(np.float32(float(vmax) - float(vmin) + 1e-8)))
    return work[None, None], start, stop


def thin_volume_message(shape, name: str | None = None) -> str:
    """Why a volume with fewer than 2 voxels along an axis (one slice, a 2-D image) is refused."""
    dims = " x ".join(str(int(n)) for n in shape)
    return (
        f"{name + ': ' if name else ''}a volume of {dims} voxels has fewer than 2 along an axis (a single slice "
        "or a 2-D image); the model needs a 3-D volume"
    )


def preprocess_volume(
    data: np.ndarray,
    modality: str = "CT",
    window: tuple[float, float] | str | None = None,
    spatial_size: tuple[int, int, int] = PUBLISHED_INPUT_SIZE,
    crop_foreground: bool = True,
    plane: str | None = None,
) -> tuple[torch.Tensor, PreprocessTransform]:
    """Volume -> model input (1, 1, D, H, W) float32 in [0, 1], and its transform.

    ``data`` is a slice stack (D, H, W) as in training, or, with ``plane``, a display-ordered
    (z, y, x) layer acquired in that plane ("axial", "coronal" or "sagittal").
    """
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D volume (z, y, x), got shape {data.shape}")
    if plane:
        data = plane_view(data, plane)
    if min(data.shape) < 2:
        raise VolumeReadError(thin_volume_message(data.shape))
    kind, low, high = intensity_range(data, modality, window)
    tensor, start, stop = _scaled_crop(data, low, high, crop_foreground)
    if tuple(tensor.shape[2:]) != tuple(spatial_size):
        tensor = F.interpolate(tensor, size=tuple(spatial_size), mode="trilinear", align_corners=False)
    transform = PreprocessTransform(
        input_shape=tuple(int(s) for s in data.shape),
        crop_start=tuple(start),
        crop_stop=tuple(stop),
        output_shape=tuple(int(s) for s in spatial_size),
        intensity=kind,
        low=low,
        high=high,
        plane=plane or None,
    )
    return tensor.contiguous(), transform


def model_input(
    volume,
    size: tuple[int, int, int] = PUBLISHED_INPUT_SIZE,
    window: tuple[float, float] | str | None = None,
    crop_foreground: bool = True,
) -> tuple[torch.Tensor, PreprocessTransform]:
    """A display-ordered `Volume` -> model input (1, 1, D, H, W) of ``size``, and its transform.

    The volume is read as the slice stack of ``volume.plane`` with ``volume.modality``'s intensity
    scaling. ``window`` is what the model is given (a preset name or (center, width); None: the
    modality default); pass ``volume.window`` to use the file's.
    """
    return preprocess_volume(
        volume.data,
        modality=volume.modality,
        window=window,
        spatial_size=tuple(int(s) for s in size),
        crop_foreground=crop_foreground,
        plane=volume.plane,
    )
