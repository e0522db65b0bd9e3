"""NIfTI (.nii, .nii.gz) in and out.

Reading keeps nibabel's array proxy: uncompressed files stay memory-mapped and compressed files
are decompressed once, straight into the array we hand out. Reorientation is a view (see
`orientation`), so opening a volume never costs more than one copy of it.
"""

from __future__ import annotations

import gzip
import re
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from ._util import VolumeReadError, count_nans, sample_slices, short_hash
from .orientation import origin_from_affine, reorient_xyz, spacing_from_affine, stored_slice_plane
from .volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")

_CT_WORDS = re.compile(r"\b(CT|CTA|computed tomography)\b", re.IGNORECASE)
_MR_WORDS = re.compile(r"\b(MR|MRI|T1w?|T2w?|FLAIR|DWI|PD|BOLD)\b", re.IGNORECASE)


def is_nifti(path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def guess_modality(data: np.ndarray, description: str = "") -> str:
    """CT if the header says so or the values look like Hounsfield units, MR otherwise.

    CT has a good share of air (about -1000 HU, or padding below it) together with tissue or bone
    above +300 HU; MR intensities are non-negative apart from small interpolation undershoots.
    """
    if _CT_WORDS.search(description):
        return "CT"
    if _MR_WORDS.search(description):
        return "MR"
    sample = sample_slices(data)
    finite = sample[np.isfinite(sample)] if np.issubdtype(sample.dtype, np.floating) else sample
    if finite.size and np.mean(finite <= -900) >= 0.02 and float(finite.max()) >= 300:
        return "CT"
    return "MR"


def _read_gzipped_data(path: Path, proxy, chunk: int = 1 << 22) -> np.ndarray:
    """Decompress the voxel block straight into its final array, a chunk at a time.

    Reading it in one go (what nibabel does for .gz) briefly holds the decompressed bytes twice.
    """
    out = np.empty(proxy.shape, dtype=proxy.dtype, order=proxy.order)
    target = memoryview(out.reshape(-1, order=proxy.order)).cast("B")
    with gzip.open(path, "rb") as handle:
        handle.seek(int(proxy.offset))
        done = 0
        while done < target.nbytes:
            count = handle.readinto(target[done : done + chunk])
            if not count:
                raise OSError(f"data block ends after {done} of {target.nbytes} bytes")
            done += count
    slope, inter = float(proxy.slope), float(proxy.inter)
    if slope != 1.0 or inter != 0.0:
        out = out * np.float32(slope) + np.float32(inter)  # scaled data: one float copy
    return out


def read_nifti(path) -> Volume:
    """Read a 3-D NIfTI image into display orientation (see `orientation`)."""
    path = Path(path)
    try:
        image = nib.load(str(path))
    except Exception as err:  # nibabel raises several types for damaged headers
        raise VolumeReadError(f"{path.name}: not a readable NIfTI file ({err})") from err
    shape = image.shape
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise VolumeReadError(
            f"{path.name}: expected a 3-D volume, got shape {image.shape}; "
            "split 4-D series into 3-D files first"
        )
    try:
        if str(path).lower().endswith(".gz"):
            array = _read_gzipped_data(path, image.dataobj)
        else:
            array = np.asanyarray(image.dataobj)
    except Exception as err:  # truncated or corrupt data block
        raise VolumeReadError(f"{path.name}: image data could not be read ({err})") from err
    while array.ndim > 3:  # trailing singleton axes (x, y, z, 1): an indexing view, never a copy
        array = array[..., 0]
    if isinstance(array, np.memmap):
        array = np.asarray(array)  # a plain view of the map: no copy, slices stay ndarrays

    affine = image.affine if image.affine is not None else np.eye(4)
    data, display_affine = reorient_xyz(array, affine)
    description = image.header.get("descrip", np.array(b"")).tobytes().decode("latin-1")
    description = description.strip("\x00 ")
    modality = guess_modality(data, description)
    nans = count_nans(data)
    if nans:
        warnings.warn(
            f"{path.name}: {nans} voxels are NaN; they are shown as empty and count as the "
            "lowest intensity for the model",
            stacklevel=2,
        )
    spacing = spacing_from_affine(display_affine)
    return Volume(
        data=data,
        spacing=spacing,
        origin=origin_from_affine(display_affine),
        affine=display_affine,
        modality=modality,
        window=None,
        description=nifti_stem(path),
        metadata={
            "source_hash": short_hash(path.resolve()),
            "format": "nifti",
            "nan_voxels": nans,
            "stored_orientation": "".join(nib.aff2axcodes(affine)),
            "acquisition_plane": stored_slice_plane(affine, guess_thick_axis=True),
        },
    )


def write_nifti_volume(volume: Volume, path) -> str:
    """Write a Volume as NIfTI; reading it back gives the same array, affine and modality."""
    from .orientation import affine_from_scale_translate

    path = Path(path)
    if not str(path).lower().endswith(NIFTI_SUFFIXES):
        path = path.with_name(path.name + ".nii.gz")
    affine = volume.affine
    if affine is None:
        affine = affine_from_scale_translate(volume.spacing, volume.origin)
    data = np.asarray(volume.data)
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    image = nib.Nifti1Image(data.transpose(2, 1, 0), np.asarray(affine, dtype=float))
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = volume.modality.encode("ascii", "ignore")[:80]
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))
    return str(path)


def nifti_series_info(path):
    """A `SeriesInfo` from the header and one middle slice, without loading the volume."""
    from .dicom import SeriesInfo

    path = Path(path)
    try:
        image = nib.load(str(path))
    except Exception as err:
        raise VolumeReadError(f"{path.name}: not a readable NIfTI file ({err})") from err
    if len(image.shape) < 3 or any(s != 1 for s in image.shape[3:]):
        raise VolumeReadError(f"{path.name}: expected a 3-D volume, got shape {image.shape}")
    shape = image.shape[:3]
    description = image.header.get("descrip", np.array(b"")).tobytes().decode("latin-1").strip("\x00 ")
    try:
        middle = np.asarray(image.dataobj[:, :, shape[2] // 2])
    except Exception as err:
        raise VolumeReadError(f"{path.name}: image data could not be read ({err})") from err
    dummy = np.broadcast_to(np.zeros((), np.uint8), shape)
    display_shape = reorient_xyz(dummy, image.affine)[0].shape
    return SeriesInfo(
        uid_hash=short_hash(path.resolve()),
        description=nifti_stem(path),
        modality=guess_modality(middle.reshape(middle.shape[:2])[None], description),
        n_slices=int(display_shape[0]),
        shape=tuple(int(s) for s in display_shape),
    )
