"""napari glue: the reader and writer named in napari.yaml, and layer tuples for volumes.

A folder or zip holding several series opens as one image layer per series, each named by its
series description: nothing is picked silently. To offer a choice instead (the Volume dock does),
call `napari_med3dvlm.io.list_series(path)` and then `read_volume(path, series=...)`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .nifti import write_nifti_volume
from .orientation import affine_from_scale_translate, origin_from_affine, spacing_from_affine
from .preprocess import PreprocessTransform, preprocess_volume
from .reading import is_supported, read_volumes
from .volume import Volume
from .windows import contrast_limits


def volume_layer_data(volume: Volume, name: str | None = None) -> tuple:
    """(data, kwargs, "image") for napari, in mm, with the display window applied."""
    metadata = {
        "affine": None if volume.affine is None else np.asarray(volume.affine).tolist(),
        "modality": volume.modality,
        "window": volume.window,
        "spacing": volume.spacing,
        "series_description": volume.description,
        "source_hash": volume.metadata.get("series_hash") or volume.metadata.get("source_hash"),
    }
    metadata.update({k: v for k, v in volume.metadata.items() if k not in metadata})
    kwargs = {
        "name": name or volume.description or f"{volume.modality} volume",
        "scale": volume.spacing,
        "translate": volume.origin,
        "contrast_limits": contrast_limits(volume, "auto"),
        "colormap": "gray",
        "metadata": metadata,
    }
    return (volume.data, kwargs, "image")


def _layer_affine(original, scale, translate) -> np.ndarray:
    """The reader's affine while the layer still sits where the reader put it (it keeps oblique
    geometry exactly); otherwise one built from the layer's current scale and translate."""
    if original is not None:
        original = np.asarray(original, dtype=float)
        if np.allclose(spacing_from_affine(original), scale, rtol=1e-4) and np.allclose(
            origin_from_affine(original), translate, atol=1e-3
        ):
            return original
    return affine_from_scale_translate(scale, translate)


def volume_from_layer_data(data, meta: dict) -> Volume:
    """Rebuild a Volume from a layer's data and attributes (for writers and the model)."""
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D image layer (z, y, x), got shape {data.shape}")
    layer_meta = dict(meta.get("metadata") or {})
    scale = tuple(meta.get("scale", (1.0, 1.0, 1.0)))[-3:]
    translate = tuple(meta.get("translate", (0.0, 0.0, 0.0)))[-3:]
    affine = _layer_affine(layer_meta.get("affine"), scale, translate)
    window = layer_meta.get("window")
    return Volume(
        data=data,
        spacing=spacing_from_affine(affine),
        origin=origin_from_affine(affine),
        affine=affine,
        modality=str(layer_meta.get("modality", "CT")),
        window=tuple(window) if window is not None else None,
        description=str(meta.get("name", "")),
        metadata={
            "source_hash": layer_meta.get("source_hash", ""),
            "acquisition_plane": layer_meta.get("acquisition_plane", "axial"),
        },
    )


def get_reader(path):
    """npe2 reader hook: a reader function for our files, None for anything else."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(is_supported(p) for p in paths):
        return None
    return read_layers


def read_layers(path) -> list[tuple]:
    """One image layer per series. Several selected DICOM files are grouped like a folder."""
    return [volume_layer_data(volume) for volume in read_volumes(path)]


def write_nifti(path: str, data, meta: dict) -> list[str]:
    """npe2 writer hook: an image layer to NIfTI, with its original affine when it has one."""
    if getattr(data, "ndim", 0) != 3:
        raise ValueError(f"only 3-D image layers can be saved as NIfTI; this one is {np.shape(data)}")
    volume = volume_from_layer_data(data, meta)
    return [write_nifti_volume(volume, path)]


def model_input_layer(
    source,
    transform: PreprocessTransform | None = None,
    tensor=None,
    window=None,
) -> tuple:
    """An image layer of what the model sees, overlaid on the source volume.

    `source` is a Volume or a layer tuple (data, kwargs[, type]). Without `tensor` the shared
    `preprocess_volume` is run (with `transform`'s output size and intensity range, if given).
    """
    volume = source if isinstance(source, Volume) else volume_from_layer_data(source[0], source[1])
    name = volume.description or "volume"
    if tensor is None:
        kwargs = {"modality": volume.modality, "window": window}
        if transform is not None:
            kwargs["spatial_size"] = transform.output_shape
            if transform.intensity == "window":
                kwargs["window"] = ((transform.low + transform.high) / 2, transform.high - transform.low)
            kwargs["crop_foreground"] = tuple(transform.crop_start) != (0, 0, 0) or tuple(
                transform.crop_stop
            ) != tuple(transform.input_shape)
        plane = volume.metadata.get("acquisition_plane") or "axial"
        tensor, transform = preprocess_volume(volume.data, plane=plane, **kwargs)
    elif transform is None:
        raise ValueError("pass the PreprocessTransform that produced this tensor")
    array = tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
    array = np.ascontiguousarray(transform.to_display(array.reshape(array.shape[-3:])))
    scale, translate = transform.layer_scale_translate(volume.spacing, volume.origin)
    kwargs = {
        "name": f"{name} (model input)",
        "scale": scale,
        "translate": translate,
        "contrast_limits": (0.0, 1.0),
        "colormap": "gray",
        "opacity": 0.7,
        "metadata": {"preprocess": transform.to_dict(), "source_hash": volume.metadata.get("source_hash", "")},
    }
    return (array, kwargs, "image")


__all__ = [
    "get_reader",
    "model_input_layer",
    "read_layers",
    "volume_from_layer_data",
    "volume_layer_data",
    "write_nifti",
]
