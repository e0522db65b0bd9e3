"""napari glue: the reader and writer named in napari.yaml, and layer tuples for volumes.

A folder or zip holding several series opens as one image layer per series, each named by its
series description: nothing is picked silently. To offer a choice instead (the Volume dock does),
call `napari_med3dvlm.io.list_series(path)` and then `read_volume(path, series=...)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from .dicom import is_unreadable_zip
from .nifti import write_nifti_volume
from .orientation import affine_from_scale_translate, origin_from_affine, spacing_from_affine
from .preprocess import PUBLISHED_INPUT_SIZE, PreprocessTransform, model_input
from .reading import is_supported, read_volumes
from .volume import PLANE_NAMES, DicomSource, Plane, Volume
from .windows import contrast_limits

#: Layer metadata key carrying `Volume.plane` (layers are how volumes travel in napari).
PLANE_KEY = "acquisition_plane"
#: Layer metadata key carrying `Volume.dicom` (a `DicomSource`: UIDs and headers, for the DICOM SR).
DICOM_SOURCE_KEY = "dicom_source"


def layer_dicom_source(metadata):
    """The `DicomSource` a layer was read from (None for layers not read from DICOM)."""
    source = (metadata or {}).get(DICOM_SOURCE_KEY)
    return source if isinstance(source, DicomSource) else None


def layer_plane(metadata) -> Plane:
    """The acquisition plane recorded in a layer's metadata by `volume_layer_data` (axial for layers
    from elsewhere)."""
    plane = (metadata or {}).get(PLANE_KEY) or "axial"
    return plane if plane in PLANE_NAMES else "axial"


def volume_layer_data(volume: Volume, name: str | None = None) -> tuple:
    """(data, kwargs, "image") for napari, in mm, with the display window applied."""
    metadata = {
        "affine": None if volume.affine is None else np.asarray(volume.affine).tolist(),
        "modality": volume.modality,
        "window": volume.window,
        "spacing": volume.spacing,
        "series_description": volume.description,
        "source_hash": volume.metadata.get("series_hash") or volume.metadata.get("source_hash"),
        PLANE_KEY: volume.plane,
    }
    if volume.dicom is not None:  # UIDs for finding the study again; headers only for the SR writer
        metadata.update(
            study_uid=volume.dicom.study_uid, series_uid=volume.dicom.series_uid, **{DICOM_SOURCE_KEY: volume.dicom}
        )
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
        metadata={"source_hash": layer_meta.get("source_hash", "")},
        plane=layer_plane(layer_meta),
        dicom=layer_dicom_source(layer_meta),
    )


def get_reader(path):
    """npe2 reader hook: a reader function for our files, None for anything else."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    # A damaged .zip is claimed too: reading it then raises an error naming it and what is wrong,
    # where declining it would leave napari saying only that no reader opens it.
    if not paths or not all(is_supported(p) or is_unreadable_zip(p) for p in paths):
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


class ModelInputOverlay(NamedTuple):
    """What the model is given for a volume, placed over it: a (D, H, W) array in the volume's display
    order with napari ``scale`` and ``translate`` in the volume's world millimetres."""

    data: np.ndarray
    scale: tuple[float, float, float]
    translate: tuple[float, float, float]
    transform: PreprocessTransform


def model_input_overlay(
    volume: Volume,
    size: tuple[int, int, int] = PUBLISHED_INPUT_SIZE,
    window=None,
    encoded: tuple | None = None,
) -> ModelInputOverlay:
    """The "what the model sees" overlay of ``volume``: `model_input` (or ``encoded``, a
    (tensor, transform) pair it already produced) mapped back onto the volume's grid."""
    tensor, transform = encoded if encoded is not None else model_input(volume, size, window)
    array = tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
    array = np.ascontiguousarray(transform.to_display(array.reshape(array.shape[-3:])))
    scale, translate = transform.layer_scale_translate(volume.spacing, volume.origin)
    return ModelInputOverlay(array, scale, translate, transform)


__all__ = [
    "ModelInputOverlay",
    "DICOM_SOURCE_KEY",
    "PLANE_KEY",
    "get_reader",
    "layer_dicom_source",
    "layer_plane",
    "model_input_overlay",
    "read_layers",
    "volume_from_layer_data",
    "volume_layer_data",
    "write_nifti",
]
