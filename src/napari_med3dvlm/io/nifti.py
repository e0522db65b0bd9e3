"""NIfTI (.nii, .nii.gz) in and out.

Reading keeps nibabel's array proxy: uncompressed files stay memory-mapped and compressed files
are decompressed once, straight into the array we hand out. Reorientation is a view (see
`orientation`), so opening a volume never costs more than one copy of it.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import threading
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

from ._util import (
    VolumeReadError,
    check_memory,
    count_nans,
    format_bytes,
    is_regular_file,
    not_a_regular_file,
    sample_slices,
    short_hash,
)
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


#: Bytes a .nii.gz may hold after its voxel block (read to reach and check the gzip CRC); more is refused.
GZIP_TRAILER_LIMIT = 64 << 20

_GZIP_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError

#: nibabel reports the header problems it fixes on its own logger; `_load` turns them into warnings.
_NIBABEL_LOG = threading.Lock()


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextmanager
def _header_fixes_as_warnings(name: str):
    logger = nib.imageglobals.logger
    collect = _Collect()
    with _NIBABEL_LOG:
        saved = logger.handlers[:]
        logger.handlers = [collect]
        try:
            yield
        finally:
            logger.handlers = saved
    for message in dict.fromkeys(collect.messages):
        warnings.warn(f"{name}: header value fixed on reading: {message}", stacklevel=4)


def _load(path: Path):
    """nibabel's image for ``path``, with the header checked: one 3-D greyscale volume whose data
    block the file can hold. Everything else is a `VolumeReadError` naming the file."""
    name = path.name
    if not is_regular_file(path):
        if not path.exists():
            raise VolumeReadError(f"{name}: no such file")
        raise not_a_regular_file(name)
    try:
        with _header_fixes_as_warnings(name):
            image = nib.load(str(path))
    except Exception as err:  # nibabel raises several types for damaged headers
        if str(path).lower().endswith(".gz"):
            _check_gzip_start(path)
        raise VolumeReadError(f"{name}: not a readable NIfTI file ({_describe(err)})") from err
    shape = tuple(int(s) for s in image.shape)
    if any(s <= 0 for s in shape):
        raise VolumeReadError(
            f"{name}: the header gives the image size {' x '.join(map(str, shape))}; every dimension must be "
            "at least 1 (an empty or damaged header)"
        )
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise VolumeReadError(
            f"{name}: expected a 3-D volume, got shape {image.shape}; split 4-D series into 3-D files first"
        )
    dtype = image.get_data_dtype()
    if dtype.fields is not None:
        raise VolumeReadError(
            f"{name}: colour (RGB) voxels are not supported; convert the image to greyscale first"
        )
    if dtype.kind == "c":
        raise VolumeReadError(
            f"{name}: complex-valued voxels ({dtype}) are not supported; save the magnitude as a real-valued image"
        )
    if dtype.kind not in "iuf":
        raise VolumeReadError(f"{name}: voxel type {dtype} is not supported")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    proxy = image.dataobj
    offset = int(getattr(proxy, "offset", 0))
    scaled = _scaling(proxy) is not None
    if str(path).lower().endswith(".gz"):
        check_memory(nbytes + (int(np.prod(shape, dtype=object)) * 4 if scaled else 0), name, "the image")
    else:
        size = os.stat(path).st_size
        if offset + nbytes > size:
            raise VolumeReadError(
                f"{name}: the file is truncated or its header is damaged: the header describes "
                f"{format_bytes(nbytes)} of image data from byte {offset}, the file holds "
                f"{format_bytes(max(size - offset, 0))} there"
            )
        if scaled:
            check_memory(int(np.prod(shape, dtype=object)) * 8, name, "the scaled image")
    return image


def _describe(err: BaseException) -> str:
    """An exception's message, or its type where it has none (numpy's MemoryError, struct.error)."""
    text = str(err).strip().replace("\n", " ")
    return text or type(err).__name__


def _check_gzip_start(path: Path, limit: int = 256 << 20) -> None:
    """Raise our error if a .nii.gz nibabel could not open is a damaged gzip stream (read through, up
    to ``limit`` decompressed bytes, a chunk at a time: a small file's CRC is checked while nibabel
    looks at its header, and a failed check then reads as an unknown file type)."""
    try:
        with gzip.open(path, "rb") as handle:
            done = 0
            while done < limit and (piece := handle.read(1 << 20)):
                done += len(piece)
    except _GZIP_ERRORS as err:
        raise VolumeReadError(
            f"{path.name}: damaged gzip data ({_describe(err)}); the file is corrupt or was cut short"
        ) from err


def _scaling(proxy) -> tuple[float, float] | None:
    """(slope, intercept) when the header asks for scaling; None for stored values as they are.

    A non-finite slope or intercept is ignored (NIfTI leaves it undefined) with a warning.
    """
    slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
    try:
        slope, inter = float(slope), float(inter)
    except (TypeError, ValueError):
        return None
    if not (np.isfinite(slope) and np.isfinite(inter)) or slope == 0.0:
        return None
    if slope == 1.0 and inter == 0.0:
        return None
    return slope, inter


def _read_gzipped_data(path: Path, proxy, chunk: int = 1 << 22) -> np.ndarray:
    """Decompress the voxel block straight into its final array, a chunk at a time.

    Reading it in one go (what nibabel does for .gz) briefly holds the decompressed bytes twice. The
    rest of the stream is read too (and dropped), so gzip checks its CRC and length: corruption inside
    the data is an error, never silently wrong voxels.
    """
    out = np.empty(proxy.shape, dtype=proxy.dtype, order=proxy.order)
    target = memoryview(out.reshape(-1, order=proxy.order)).cast("B")
    try:
        with gzip.open(path, "rb") as handle:
            handle.seek(int(proxy.offset))
            done = 0
            while done < target.nbytes:
                count = handle.readinto(target[done : done + chunk])
                if not count:
                    raise VolumeReadError(
                        f"{path.name}: the image data ends after {format_bytes(done)} of "
                        f"{format_bytes(target.nbytes)}; the file was cut short or its header is damaged"
                    )
                done += count
            trailing = 0
            while piece := handle.read(chunk):
                trailing += len(piece)
                if trailing > GZIP_TRAILER_LIMIT:
                    raise VolumeReadError(
                        f"{path.name}: more than {format_bytes(GZIP_TRAILER_LIMIT)} of data after the image; "
                        "not a single NIfTI image (damaged, or several files joined)"
                    )
    except _GZIP_ERRORS as err:
        raise VolumeReadError(
            f"{path.name}: damaged gzip data ({_describe(err)}); the file is corrupt or was cut short, "
            "so its voxels cannot be trusted"
        ) from err
    scaling = _scaling(proxy)
    if scaling is not None:
        slope, inter = scaling
        out = out * np.float32(slope) + np.float32(inter)  # scaled data: one float copy
    return out


def _usable_affine(affine) -> str | None:
    """None if ``affine`` can place the voxels; otherwise what is wrong with it."""
    if affine is None:
        return "missing"
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        return "has NaN or infinite values"
    columns = affine[:3, :3]
    sizes = np.sqrt((columns**2).sum(axis=0))
    if np.any(sizes < 1e-6):
        return "gives a voxel size of zero"
    if abs(np.linalg.det(columns / sizes)) < 1e-3:  # unit axes (nearly) in one plane
        return "has degenerate axes (two voxel axes point the same way)"
    return None


def _base_affine(header, name: str) -> np.ndarray:
    """The header's voxel sizes as an axis-aligned affine (what nibabel uses without sform/qform);
    a zero or non-finite size becomes 1 mm, with a warning."""
    zooms = [float(z) for z in header.get_zooms()[:3]]
    fixed = [abs(z) if np.isfinite(z) and abs(z) > 1e-6 else 1.0 for z in zooms]
    if fixed != [abs(z) for z in zooms]:
        warnings.warn(
            f"{name}: voxel sizes in the header ({', '.join(f'{z:g}' for z in zooms)}) include zero or "
            "non-finite values; 1 mm is used for those",
            stacklevel=4,
        )
    if fixed == [abs(z) for z in zooms]:
        return header.get_base_affine()
    affine = np.diag([-fixed[0], fixed[1], fixed[2], 1.0])  # nibabel's base affine (Analyze: x flipped)
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(header.get_data_shape()[:3], dtype=float) - 1) / 2)
    return affine


def _affine(image, name: str) -> np.ndarray:
    """The voxel -> RAS affine to place the image: nibabel's choice (sform, then qform, then voxel
    sizes) unless it cannot place voxels (NaN, zero-sized or degenerate axes); then the next usable
    one, with a warning that says which was used and why."""
    header = image.header
    candidates = []
    for label, getter in (("sform", header.get_sform), ("qform", header.get_qform)):
        try:
            matrix, code = getter(coded=True)
        except Exception:  # a quaternion nibabel cannot decompose
            matrix, code = np.full((4, 4), np.nan), 1
        if code:
            candidates.append((label, matrix))
    problems = []
    for label, matrix in candidates:
        problem = _usable_affine(matrix)
        if problem is None:
            if problems:
                warnings.warn(f"{name}: {'; '.join(problems)}; the {label} is used instead", stacklevel=3)
            return np.asarray(matrix, dtype=float)
        problems.append(f"the {label} affine {problem}")
    base = _base_affine(header, name)
    if problems:
        warnings.warn(
            f"{name}: {'; '.join(problems)}; the image is placed by its voxel sizes alone "
            "(orientation assumed, position unknown)",
            stacklevel=3,
        )
    return base


def read_nifti(path) -> Volume:
    """Read a 3-D NIfTI image into display orientation (see `orientation`)."""
    path = Path(path)
    image = _load(path)
    try:
        if str(path).lower().endswith(".gz"):
            array = _read_gzipped_data(path, image.dataobj)
        else:
            array = np.asanyarray(image.dataobj)
    except VolumeReadError:
        raise
    except Exception as err:  # truncated or corrupt data block
        raise VolumeReadError(f"{path.name}: image data could not be read ({_describe(err)})") from err
    while array.ndim > 3:  # trailing singleton axes (x, y, z, 1): an indexing view, never a copy
        array = array[..., 0]
    if isinstance(array, np.memmap):
        array = np.asarray(array)  # a plain view of the map: no copy, slices stay ndarrays

    affine = _affine(image, path.name)
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
        },
        plane=stored_slice_plane(affine, guess_thick_axis=True),
    )


def write_nifti_volume(volume: Volume, path, stored_orientation: str | None = None) -> str:
    """Write a Volume as NIfTI; reading it back gives the same array, affine and modality.

    Voxels are written in display order (x to Left, y to Posterior, z to Superior) unless
    ``stored_orientation`` names another (nibabel axis codes, such as the ``stored_orientation`` that
    `read_nifti` records): then in that order, so the file has the shape and affine of the one the
    volume was read from (a map over a volume then lines up with its source file in numpy too)."""
    from .orientation import affine_from_scale_translate, stored_from_display

    path = Path(path)
    if not str(path).lower().endswith(NIFTI_SUFFIXES):
        path = path.with_name(path.name + ".nii.gz")
    affine = volume.affine
    if affine is None:
        affine = affine_from_scale_translate(volume.spacing, volume.origin)
    data = np.asarray(volume.data)
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    if stored_orientation:
        array, affine = stored_from_display(data, affine, stored_orientation)
    else:
        array, affine = data.transpose(2, 1, 0), np.asarray(affine, dtype=float)
    image = nib.Nifti1Image(array, affine)
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
    image = _load(path)
    shape = image.shape[:3]
    description = image.header.get("descrip", np.array(b"")).tobytes().decode("latin-1").strip("\x00 ")
    try:
        middle = np.asarray(image.dataobj[:, :, shape[2] // 2])
    except Exception as err:
        raise VolumeReadError(
            f"{path.name}: image data could not be read ({_describe(err)}); the file may be cut short or "
            "its header damaged"
        ) from err
    dummy = np.broadcast_to(np.zeros((), np.uint8), shape)
    with warnings.catch_warnings():  # read_nifti gives the warnings when the volume is opened
        warnings.simplefilter("ignore")
        display_shape = reorient_xyz(dummy, _affine(image, path.name))[0].shape
    return SeriesInfo(
        uid_hash=short_hash(path.resolve()),
        description=nifti_stem(path),
        modality=guess_modality(middle.reshape(middle.shape[:2])[None], description),
        n_slices=int(display_shape[0]),
        shape=tuple(int(s) for s in display_shape),
    )
