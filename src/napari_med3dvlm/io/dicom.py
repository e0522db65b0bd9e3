"""DICOM series from files, folders (searched recursively) and .zip archives.

Slices are grouped by SeriesInstanceUID (and split further when one series mixes image sizes or
orientations, as localisers do), ordered by their position along the slice normal, and spaced by
those positions rather than by SliceThickness. Stored values are rescaled to modality units (HU
for CT) exactly once, here. Enhanced/multi-frame objects take geometry, rescale and window from
their functional groups.

Nothing that identifies a patient (names, IDs, dates, UIDs in clear) leaves this module: series
are named by their description and a short hash of the SeriesInstanceUID.
"""

from __future__ import annotations

import io
import math
import os
import warnings
import zipfile
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ._util import (
    MEMORY_SHARE,
    VolumeReadError,
    available_memory,
    check_memory,
    format_bytes,
    is_regular_file,
    not_a_regular_file,
    short_hash,
)
from .orientation import (
    lps_to_ras,
    origin_from_affine,
    reorient_xyz,
    spacing_from_affine,
    stored_slice_plane,
)
from .volume import DicomSource, Volume

DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")
_MAGIC_OFFSET = 128

#: A zip member over `ZIP_RATIO_FLOOR` bytes that inflates more than this many times is refused as a
#: likely zip bomb (DICOM compresses a few times, rarely a hundred).
ZIP_RATIO_LIMIT = 200
ZIP_RATIO_FLOOR = 64 << 20

_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError)

# pydicom's reading validation warns with the raw bytes of a malformed element, and a damaged length
# field makes that "value" run on over the following elements, patient name and ID included (found by
# tests/hardening/test_fuzz.py). This reader validates every value it uses itself (`_Values`), so
# pydicom's reading validation is turned off; its writing validation is left as it is.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


@dataclass(frozen=True)
class InstanceSet:
    """DICOM instances already in memory (a DICOMweb retrieval): they go through the same grouping,
    ordering, geometry and rescale as files. ``items`` are (name, pydicom Dataset) pairs; names
    appear in messages, so they must not identify the patient (use "instance 12", not a UID).
    ``label`` names the whole set in messages, ``key`` is a stable identity for `source_hash`."""

    items: tuple
    label: str
    key: str
    server: str = ""


@dataclass(frozen=True)
class SeriesInfo:
    """What a series picker shows. `uid_hash` is a short hash, never the UID itself."""

    uid_hash: str
    description: str
    modality: str
    n_slices: int
    shape: tuple[int, int, int]  # (z, y, x) after reorientation to display order


@dataclass
class _Slice:
    """One 2-D frame: where it is, how to rescale it, and how to get its pixels."""

    source: object  # a Path on disk or the bytes of a zip member
    name: str
    header: pydicom.Dataset
    frame: int | None
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float]
    thickness: float | None
    slope: float
    intercept: float
    window: tuple[float, float] | None
    instance: int
    shape: tuple[int, int] = (0, 0)  # (Rows, Columns)


@dataclass
class _Group:
    key: tuple
    slices: list[_Slice] = field(default_factory=list)
    description: str = ""
    modality: str = ""
    uid_hash: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return self.slices[0].shape


# -- finding files ------------------------------------------------------------------------------


def has_dicom_magic(head: bytes) -> bool:
    return head[_MAGIC_OFFSET : _MAGIC_OFFSET + 4] == b"DICM"


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(_MAGIC_OFFSET + 4)


def _label(path) -> str:
    """How messages refer to a source: folder names often name the patient, so they never appear."""
    if isinstance(path, InstanceSet):
        return path.label
    if not isinstance(path, (str, Path)):
        return f"{len(path)} selected files"
    path = Path(path)
    if path.is_dir():
        return "the folder"
    if _is_zip(path):
        return "the zip archive"
    return path.name


def _is_zip(path: Path) -> bool:
    return is_regular_file(path) and zipfile.is_zipfile(path)


def _iter_sources(path, limit: int | None = None, examine: int | None = None, quiet: bool = False):
    """(name, source) for every candidate DICOM file under a file, folder, zip or list of files.

    limit stops after that many DICOM files; examine after that many files looked at (so the
    reader hook stays quick on large folders that hold no DICOM at all). Only regular files are
    opened: pipes, devices and sockets are skipped (a warning counts them). A candidate that cannot
    be read at all comes as (name, VolumeReadError).
    """
    if isinstance(path, InstanceSet):
        yield from path.items
        return
    if not isinstance(path, (str, Path)):
        for item in path:
            item = Path(item)
            yield item.name, (item if is_regular_file(item) else not_a_regular_file(item.name))
        return
    path = Path(path)
    if path.is_dir():
        found = examined = special = 0
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                examined += 1
                if examine and examined > examine:
                    return
                file = Path(root) / name
                if not is_regular_file(file):
                    special += 1
                    continue
                try:
                    head = _read_head(file)
                except OSError:
                    continue
                if has_dicom_magic(head) or name.lower().endswith(DICOM_SUFFIXES):
                    yield name, file  # base name only: folder names may name the patient
                    found += 1
                    if limit and found >= limit:
                        return
        if special and not quiet:
            warnings.warn(
                f"the folder: skipped {special} entries that are not regular files (named pipes, devices, "
                "sockets or broken links) without opening them",
                stacklevel=3,
            )
    elif _is_zip(path):
        yield from _zip_sources(path, limit, examine, quiet)
    elif is_regular_file(path):
        if path.name.lower().endswith(".zip"):
            raise VolumeReadError(
                f"{path.name}: damaged or truncated zip archive (its table of contents is missing); "
                "re-create or download it again"
            )
        yield path.name, path
    elif path.exists():
        raise not_a_regular_file(path.name)
    else:
        raise FileNotFoundError(path)


def _zip_sources(path: Path, limit: int | None, examine: int | None, quiet: bool = False):
    """`_iter_sources` for a zip archive: members streamed with a cap on what they inflate to.

    Each DICOM member is read into memory (pydicom parses it there), so members together may not
    inflate beyond `MEMORY_SHARE` of the free memory, and a large member that inflates
    `ZIP_RATIO_LIMIT` times or more is refused. Encrypted members are skipped; an archive holding
    only encrypted members is an error.
    """
    label = "the zip archive"
    found = encrypted = 0
    try:
        with zipfile.ZipFile(path) as archive:
            budget = int(MEMORY_SHARE * available_memory())
            total = 0
            for examined, info in enumerate(archive.infolist(), start=1):
                if examine and examined > examine:
                    break
                if info.is_dir():
                    continue
                member = Path(info.filename).name
                if info.flag_bits & 0x1:
                    encrypted += 1
                    continue
                try:
                    with archive.open(info) as handle:
                        head = handle.read(_MAGIC_OFFSET + 4)
                except _ZIP_ERRORS as err:
                    yield member, VolumeReadError(f"{member}: damaged zip member ({_why(err)})")
                    continue
                if not (has_dicom_magic(head) or member.lower().endswith(DICOM_SUFFIXES)):
                    continue
                size = int(info.file_size)
                if size > ZIP_RATIO_FLOOR and size > ZIP_RATIO_LIMIT * max(int(info.compress_size), 1):
                    raise VolumeReadError(
                        f"{label}: member {member} would inflate from {format_bytes(info.compress_size)} to "
                        f"{format_bytes(size)}; refused as a likely zip bomb. If you trust the archive, "
                        "extract it and open the folder"
                    )
                total += size
                if total > budget:
                    raise VolumeReadError(
                        f"{label}: its DICOM members inflate to more than {format_bytes(budget)}, the memory "
                        "available for reading them; extract the archive and open the folder instead"
                    )
                try:
                    data = _read_member(archive, info)
                except _ZIP_ERRORS as err:
                    yield member, VolumeReadError(f"{member}: damaged zip member ({_why(err)})")
                    continue
                yield member, data
                found += 1
                if limit and found >= limit:
                    return
    except _ZIP_ERRORS as err:
        raise VolumeReadError(f"{label}: damaged zip archive ({_why(err)})") from err
    if encrypted and not found:
        raise VolumeReadError(
            f"{label} is encrypted (password-protected); extract it with its password and open the folder"
        )
    if encrypted and not quiet:
        warnings.warn(
            f"{label}: skipped {encrypted} encrypted members; extract the archive with its password to read them",
            stacklevel=3,
        )


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytearray:
    """A member's bytes, streamed into a buffer of its declared size (never more: zipfile stops at
    it, and checks the CRC at the end)."""
    size = int(info.file_size)
    buffer = bytearray(size)
    view = memoryview(buffer)
    # deflate output per read is bounded by the request; other methods inflate a whole input chunk
    chunk = 1 << 20 if info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) else 1 << 14
    done = 0
    with archive.open(info) as handle:
        while done < size:
            count = handle.readinto(view[done : done + chunk])
            if not count:
                raise EOFError(f"member data ends after {done} of {size} bytes")
            done += count
        handle.read(1)  # reach the end of the stream so zipfile checks the CRC
    return buffer


def _why(err: BaseException) -> str:
    return str(err).strip() or type(err).__name__


def looks_like_dicom(path, examine: int = 2000) -> bool:
    """Cheap check for napari's reader hook: is there a DICOM file here (among the first few)?"""
    path = Path(path)
    try:
        if not path.is_dir() and not is_regular_file(path):
            return False
        if path.is_file() and not zipfile.is_zipfile(path):
            return has_dicom_magic(_read_head(path)) or path.name.lower().endswith(DICOM_SUFFIXES)
        return any(True for _ in _iter_sources(path, limit=1, examine=examine, quiet=True))
    except (OSError, VolumeReadError):
        return False


# -- headers ------------------------------------------------------------------------------------


def _dcmread(name: str, source, pixels: bool) -> pydicom.Dataset:
    if isinstance(source, pydicom.Dataset):  # parsed already (`InstanceSet`)
        return source
    try:
        if isinstance(source, (bytes, bytearray)):
            return pydicom.dcmread(io.BytesIO(source), stop_before_pixels=not pixels)
        # Deferring large elements leaves pixel data on disk until a series is actually loaded.
        return pydicom.dcmread(source, defer_size=None if pixels else "64 KB")
    except InvalidDicomError as err:
        raise VolumeReadError(f"{name}: not a DICOM file ({err})") from err
    except Exception as err:  # truncated or malformed element data
        raise VolumeReadError(f"{name}: damaged DICOM file ({err})") from err


class _Values:
    """Numeric header values of one file, parsed from their text without pydicom's conversion (so
    a bad value never raises or warns from inside pydicom). Values that are not needed and cannot be
    used are noted in `ignored` and replaced by a default; a bad needed value is a `VolumeReadError`
    naming the file and the tag."""

    def __init__(self, name: str):
        self.name = name
        self.ignored: dict[str, str] = {}  # keyword -> the unusable value, as stored

    def texts(self, item, keyword: str) -> list[str] | None:
        """The element's values as text; None when absent or empty."""
        if item is None:
            return None
        try:
            element = item.get_item(keyword)
        except (KeyError, ValueError, TypeError):
            return None
        if element is None:
            return None
        value = element.value
        vr = element.VR
        if vr is None:  # implicit VR files: the dictionary's
            try:
                vr = pydicom.datadict.dictionary_VR(element.tag)
            except KeyError:
                vr = None
        if isinstance(value, (bytes, bytearray)) and vr in ("DS", "IS"):
            parts = value.decode("ascii", "replace").split("\\")
        else:
            try:
                value = item[keyword].value  # binary VRs (US, UL, FL): pydicom unpacks them
            except Exception:  # odd length or damaged element bytes
                return [repr(bytes(element.value or b""))[:40]]
            if value is None:
                return None
            parts = list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
        parts = [str(p).strip(" \x00") for p in parts]
        return parts if any(parts) else None

    def numbers(self, item, keyword: str, count: int | None = None) -> tuple[list[float] | None, str | None]:
        """(finite numbers, None), (None, None) when absent, or (None, the bad text)."""
        texts = self.texts(item, keyword)
        if texts is None:
            return None, None
        shown = "\\".join(texts)[:40]
        try:
            values = [float(t) for t in texts]
        except ValueError:
            return None, shown
        if (count is not None and len(values) != count) or not all(math.isfinite(v) for v in values):
            return None, shown
        return values, None

    def optional(self, item, keyword, count=None, positive=False):
        """Numbers of a tag that is not needed: None (noted in `ignored`) if unusable."""
        values, bad = self.numbers(item, keyword, count)
        if values is not None and positive and min(values) <= 0:
            values, bad = None, "\\".join(f"{v:g}" for v in values)
        if bad is not None:
            self.ignored.setdefault(keyword, bad)
        return values

    def needed(self, item, keyword, what: str, default=None, check=lambda v: True) -> float:
        """The first number of a tag the pixels depend on; absent: ``default`` (an error if None)."""
        values, bad = self.numbers(item, keyword)
        if values is None and bad is None:
            if default is None:
                raise VolumeReadError(f"{self.name}: the {keyword} tag is missing; the file is damaged")
            return default
        if values is None or not check(values[0]):
            shown = bad if bad is not None else f"{values[0]:g}"
            raise VolumeReadError(
                f"{self.name}: {keyword} is {shown!r}, expected {what}; the file's header is damaged"
            )
        return values[0]

    def needed_int(self, item, keyword, what: str, default=None, minimum: int = 1) -> int:
        value = self.needed(
            item, keyword, what, default, check=lambda v: float(v).is_integer() and minimum <= v < 2**31
        )
        return int(value)


def _functional_item(ds, frame: int, sequence: str):
    """The item of a functional-group sequence for one frame: per-frame first, then shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame) and per_frame[frame].get(sequence):
        return per_frame[frame][sequence][0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and shared[0].get(sequence):
        return shared[0][sequence][0]
    return None


def _orientation(values) -> np.ndarray | None:
    """Row and column direction cosines, normalised; None unless they are two roughly orthogonal
    non-zero directions (anything else cannot orient the slices)."""
    if values is None:
        return None
    row, col = np.asarray(values[:3], dtype=float), np.asarray(values[3:], dtype=float)
    row_norm, col_norm = np.linalg.norm(row), np.linalg.norm(col)
    if row_norm < 1e-3 or col_norm < 1e-3:
        return None
    row, col = row / row_norm, col / col_norm
    if abs(float(np.dot(row, col))) > 0.1:
        return None
    return np.concatenate([row, col])


def _window(values: _Values, item) -> tuple[float, float] | None:
    if item is None:
        return None
    center = values.optional(item, "WindowCenter")
    width = values.optional(item, "WindowWidth")
    if center is None or width is None or width[0] <= 0:
        return None
    return float(center[0]), float(width[0])


def _check_frames(values: _Values, ds, source, rows: int, cols: int, n_frames: int) -> None:
    """Refuse a header that promises more frames than its pixel data can hold, before anything is
    decoded or even described (a claim of 2**31 frames must cost nothing)."""
    try:
        element = ds.get_item("PixelData", keep_deferred=True)
    except (KeyError, ValueError, TypeError):
        return
    if element is None:
        return
    length = getattr(element, "length", None)
    if length is None or length == 0xFFFFFFFF:  # undefined length: encapsulated; bounded by the file
        if isinstance(source, (bytes, bytearray)):
            length = len(source)
        elif isinstance(source, pydicom.Dataset):  # in memory: the element's own bytes
            value = getattr(element, "value", None)
            if not isinstance(value, (bytes, bytearray)):
                return
            length = len(value)
        else:
            try:
                length = os.stat(source).st_size
            except OSError:
                return
    try:
        compressed = bool(ds.file_meta.TransferSyntaxUID.is_compressed)
    except (AttributeError, ValueError, TypeError):
        compressed = False
    bits = values.needed_int(ds, "BitsAllocated", "a bit depth of 1 to 64", default=16)
    samples = values.needed_int(ds, "SamplesPerPixel", "1 (greyscale) or 3 (colour)", default=1)
    if compressed:  # every frame takes at least one 8-byte item in encapsulated data
        if n_frames * 8 > length:
            raise VolumeReadError(
                f"{values.name}: NumberOfFrames is {n_frames}, but the compressed pixel data holds only "
                f"{format_bytes(length)}; the header is damaged or the file cut short"
            )
        return
    frame_bytes = math.ceil(rows * cols * samples * bits / 8)
    if n_frames * frame_bytes > length:
        whole = length // frame_bytes if frame_bytes else 0
        raise VolumeReadError(
            f"{values.name}: the header describes {n_frames} frame(s) of {rows} x {cols} pixels "
            f"({format_bytes(n_frames * frame_bytes)}), but the pixel data holds {format_bytes(length)}, "
            f"{whole} whole frame(s); the file is damaged or cut short"
        )


def _frame_slices(name, source, ds, values: _Values | None = None) -> list[_Slice]:
    """Describe every frame of one object (one slice for classic single-frame files)."""
    values = values or _Values(name)
    rows = values.needed_int(ds, "Rows", "a whole number of pixel rows from 1 to 65535")
    cols = values.needed_int(ds, "Columns", "a whole number of pixel columns from 1 to 65535")
    n_frames = values.needed_int(ds, "NumberOfFrames", "a whole number of frames, at least 1", default=1)
    _check_frames(values, ds, source, rows, cols, n_frames)
    enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    instance = values.optional(ds, "InstanceNumber")
    instance = int(instance[0]) if instance is not None and abs(instance[0]) < 2**31 else 0

    def position_of(item):
        return values.optional(item, "ImagePositionPatient", 3)

    def orientation_of(item):
        cosines = values.optional(item, "ImageOrientationPatient", 6)
        oriented = _orientation(cosines)
        if cosines is not None and oriented is None:
            values.ignored.setdefault("ImageOrientationPatient", "\\".join(f"{v:g}" for v in cosines))
        return oriented

    def thickness_of(item, fallback):
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            found = values.optional(item, keyword, 1, positive=True)
            if found is not None:
                return found[0]
        return fallback

    base_position = position_of(ds)
    base_orientation = orientation_of(ds)
    base_thickness = thickness_of(ds, None)
    slices = []
    for frame in range(n_frames):
        position, orientation = base_position, base_orientation
        spacing_item, rescale_item, voi_item = ds, ds, ds
        thickness = base_thickness
        if enhanced:
            plane = _functional_item(ds, frame, "PlanePositionSequence")
            if plane is not None:
                position = position_of(plane)
            plane_orientation = _functional_item(ds, frame, "PlaneOrientationSequence")
            if plane_orientation is not None:
                orientation = orientation_of(plane_orientation)
            measures = _functional_item(ds, frame, "PixelMeasuresSequence")
            if measures is not None:
                spacing_item = measures
                thickness = thickness_of(measures, thickness)
            rescale_item = _functional_item(ds, frame, "PixelValueTransformationSequence") or ds
            voi_item = _functional_item(ds, frame, "FrameVOILUTSequence") or ds
        pixel_spacing = values.optional(spacing_item, "PixelSpacing", 2, positive=True)
        if pixel_spacing is None:
            pixel_spacing = values.optional(ds, "ImagerPixelSpacing", 2, positive=True)
        slope = values.needed(rescale_item, "RescaleSlope", "a non-zero number", 1.0, check=lambda v: v != 0)
        intercept = values.needed(rescale_item, "RescaleIntercept", "a number", 0.0)
        slices.append(
            _Slice(
                source=source,
                name=name,
                header=ds,
                frame=frame if (n_frames > 1 or enhanced) else None,
                position=None if position is None else np.asarray(position, dtype=float),
                orientation=orientation,
                pixel_spacing=tuple(pixel_spacing) if pixel_spacing is not None else (1.0, 1.0),
                thickness=thickness,
                slope=float(slope),
                intercept=float(intercept),
                window=_window(values, voi_item),
                instance=instance * 100000 + frame,
                shape=(rows, cols),
            )
        )
    return slices


def _text(ds, keyword: str, default: str = "") -> str:
    """A text tag, or ``default`` when absent or undecodable (a damaged character set)."""
    try:
        value = ds.get(keyword, None)
        return default if value in (None, "") else str(value).strip()
    except Exception:  # pydicom decoding of damaged element bytes
        return default


def _is_image(ds, values: _Values) -> str | None:
    """None for a greyscale image; otherwise why it is skipped."""
    if "PixelData" not in ds:
        try:
            sop = getattr(ds.get("SOPClassUID"), "name", None)
        except Exception:
            sop = None
        return str(sop or "no pixel data")
    if values.needed_int(ds, "SamplesPerPixel", "1 (greyscale) or 3 (colour)", default=1) != 1:
        return "colour image"
    return None


def _should_have_pixels(ds) -> bool:
    meta = getattr(ds, "file_meta", None) or {}
    try:
        sop = getattr(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID"), "name", "")
    except Exception:
        sop = ""
    return "PixelData" not in ds and ("Rows" in ds or "Image Storage" in str(sop))


def _describe_file(name: str, source, ds, values: _Values):
    """(skip reason or None, group key, slices, modality, description) for one header; any
    damage pydicom reports while interpreting it becomes a `VolumeReadError` naming the file."""
    try:
        reason = _is_image(ds, values)
        if reason and _should_have_pixels(ds):
            raise VolumeReadError(f"{name}: image object without pixel data (truncated or damaged file)")
        if reason:
            return reason, None, [], "", ""
        uid = _text(ds, "SeriesInstanceUID") or f"no-series-uid:{name}"
        slices = _frame_slices(name, source, ds, values)
        if len(slices) > 1:
            key = (uid, _text(ds, "SOPInstanceUID", name))
        else:
            orientation = slices[0].orientation
            key = (uid, *slices[0].shape, None if orientation is None else tuple(np.round(orientation, 3)))
        modality = _text(ds, "Modality") or "OT"
        description = _text(ds, "SeriesDescription") or _text(ds, "ProtocolName")
        return None, key, slices, modality, description
    except VolumeReadError:
        raise
    except Exception as err:  # pydicom raises many types for damaged element data
        raise VolumeReadError(f"{name}: damaged DICOM header ({_why(err)})") from err


def _scan(path) -> list[_Group]:
    """Read headers only and group them into series.

    A single damaged file is an error; in a folder, zip or selection it is skipped with a
    warning so the other series still open. Unusable values of tags that are not needed (window,
    instance number, spacing, ...) are replaced by defaults, with one warning for the source.
    """
    single = isinstance(path, (str, Path)) and is_regular_file(path) and not zipfile.is_zipfile(path)
    label = _label(path)
    groups: dict[tuple, _Group] = {}
    skipped: dict[str, int] = defaultdict(int)
    unreadable: list[str] = []
    ignored: dict[str, list] = {}
    n_files = 0
    for name, source in _iter_sources(path):
        n_files += 1
        # Zip members are in memory already; files on disk keep their pixels there until loaded.
        values = _Values(name)
        try:
            if isinstance(source, VolumeReadError):
                raise source
            ds = _dcmread(name, source, pixels=isinstance(source, (bytes, bytearray)))
            reason, key, slices, modality, description = _describe_file(name, source, ds, values)
        except VolumeReadError as err:
            if single:
                raise
            unreadable.append(str(err))
            continue
        for keyword, bad in values.ignored.items():
            ignored.setdefault(keyword, [bad, 0])[1] += 1
        if reason:
            skipped[reason] += 1
            continue
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(key=key, uid_hash=short_hash(key[0]))
            group.modality = modality
            group.description = description
        group.slices.extend(slices)
    if ignored:
        shown = "; ".join(
            f"{keyword} {bad!r}" + (f" (and {count - 1} more files)" if count > 1 else "")
            for keyword, (bad, count) in sorted(ignored.items())
        )
        warnings.warn(f"{label}: unusable header values ignored, defaults used: {shown}", stacklevel=3)
    if skipped:
        summary = ", ".join(f"{count} x {reason}" for reason, count in sorted(skipped.items()))
        warnings.warn(f"{label}: skipped DICOM objects without a greyscale image ({summary})", stacklevel=3)
    if unreadable:
        shown = "; ".join(unreadable[:3]) + ("; ..." if len(unreadable) > 3 else "")
        warnings.warn(f"{label}: skipped {len(unreadable)} unreadable files: {shown}", stacklevel=3)
    if not groups:
        reasons = ", ".join(f"{count} x {reason}" for reason, count in sorted(skipped.items()))
        raise VolumeReadError(
            f"{label}: no DICOM image series found ({n_files} DICOM files looked at"
            + (f"; unreadable: {unreadable[0]}" if unreadable else "")
            + (f"; skipped: {reasons}" if reasons else "")
            + ")"
        )
    return _name_groups(_merge_unoriented(list(groups.values())))


def _merge_unoriented(groups: list[_Group]) -> list[_Group]:
    """Slices without a usable orientation join the one oriented group of their series and size
    (a damaged ImageOrientationPatient in one file must not split a series in two)."""
    oriented = defaultdict(list)
    for group in groups:
        if len(group.key) == 4 and group.key[3] is not None:
            oriented[group.key[:3]].append(group)
    kept = []
    for group in groups:
        targets = oriented.get(group.key[:3], []) if len(group.key) == 4 and group.key[3] is None else []
        if len(targets) == 1:
            target = targets[0]
            for item in group.slices:
                item.orientation = target.slices[0].orientation
            target.slices.extend(group.slices)
        else:
            kept.append(group)
    return kept


def _name_groups(groups: list[_Group]) -> list[_Group]:
    """Give every group a readable name; parts of one split series get a suffix."""
    by_uid = defaultdict(list)
    for group in groups:
        by_uid[group.key[0]].append(group)
    for parts in by_uid.values():
        for number, group in enumerate(parts, start=1):
            base = group.description or f"{group.modality} series {group.uid_hash[:6]}"
            if len(parts) > 1:
                base = f"{base} (part {number} of {len(parts)})"
                group.uid_hash = f"{group.uid_hash}-{number}"
            group.description = base
    return groups


# -- geometry -----------------------------------------------------------------------------------


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


# -- pixels -------------------------------------------------------------------------------------


def _rescale(raw: np.ndarray, item: _Slice) -> np.ndarray:
    """Stored values -> modality units (HU for CT), for one frame."""
    if item.header.get("ModalityLUTSequence"):
        try:
            return pydicom.pixels.apply_modality_lut(raw, item.header)
        except Exception as err:  # a damaged lookup table
            raise VolumeReadError(f"{item.name}: its modality lookup table cannot be applied ({_why(err)})") from err
    if item.slope == 1.0 and float(item.intercept).is_integer():
        if item.intercept == 0:
            return raw
        return raw.astype(np.int32) + int(item.intercept)
    return raw.astype(np.float32) * np.float32(item.slope) + np.float32(item.intercept)


def _fits(values: np.ndarray, dtype: np.dtype) -> bool:
    if dtype.kind == "f":
        return True
    if values.dtype.kind == "f":
        return False
    info = np.iinfo(dtype)
    return values.size == 0 or (info.min <= values.min() and values.max() <= info.max)


def _dims(shape) -> str:
    return " x ".join(str(int(n)) for n in shape)


def _pixels(slices: list[_Slice], shape: tuple[int, int]) -> tuple[np.ndarray, list[_Slice], dict[str, str]]:
    """Stack the frames in the given order, applying each frame's rescale once.

    The output starts as int16 (what CT in HU needs) and is widened only if a frame does not fit,
    so a series costs one volume-sized allocation in the common case. A frame whose pixel data
    cannot be decoded, or does not match the series' size, is left out: returns the stack, the
    slices it holds, and {file name: what was wrong} for those left out.
    """
    out = None
    kept: list[_Slice] = []
    failed: dict[str, str] = {}
    frames_of, frames, frames_error = None, None, None
    for item in slices:
        try:
            if item.frame is None:
                raw = _take_pixels(item)
            else:
                if frames_of is not item.header:
                    frames_of, frames, frames_error = item.header, None, None
                    try:
                        frames = _take_pixels(item)
                        frames = frames[None] if frames.ndim == 2 else frames
                    except VolumeReadError as err:
                        frames_error = err
                if frames_error is not None:
                    raise frames_error
                if item.frame >= len(frames):
                    raise VolumeReadError(
                        f"{item.name}: frame {item.frame + 1} is missing from its decoded pixel data "
                        f"({len(frames)} frames)"
                    )
                raw = frames[item.frame]
            if raw.shape != shape:
                raise VolumeReadError(
                    f"{item.name}: its pixel data decodes to {_dims(raw.shape)} values, but its slices are "
                    f"{_dims(shape)} pixels (Rows, Columns, NumberOfFrames or SamplesPerPixel do not match "
                    "the pixel data)"
                )
            values = _rescale(raw, item)
        except VolumeReadError as err:
            failed.setdefault(item.name, str(err))
            continue
        if out is None:
            dtype = np.dtype(np.int16) if values.dtype.kind in "iu" else np.dtype(np.float32)
            if not _fits(values, dtype):
                dtype = np.result_type(values.dtype, np.int16)
            out = np.empty((len(slices), *shape), dtype=dtype)
        elif not _fits(values, out.dtype):
            wider = np.float32 if values.dtype.kind == "f" else np.result_type(values.dtype, out.dtype)
            out = out.astype(wider)
        out[len(kept)] = values
        kept.append(item)
    if out is None:
        return np.empty((0, *shape), np.int16), kept, failed
    return out[: len(kept)], kept, failed


def _take_pixels(item: _Slice) -> np.ndarray:
    """Decode a file's pixels and drop them (bytes and pydicom's cached array) from its header,
    so a loaded series is held in memory once: in the output volume."""
    array = _decode(item.name, item.header)
    if "PixelData" in item.header:
        del item.header.PixelData
    return array


def _decode(name: str, ds) -> np.ndarray:
    try:
        return ds.pixel_array
    except Exception as err:  # pydicom and its decoders raise many types for damaged data
        raise VolumeReadError(f"{name}: pixel data could not be decoded ({_why(err)})") from err


# -- public -------------------------------------------------------------------------------------


def _info(group: _Group) -> SeriesInfo:
    slices, affine, _, _ = _sorted_geometry(group)
    rows, cols = group.shape
    shape = _display_shape(len(slices), rows, cols, affine)
    return SeriesInfo(group.uid_hash, group.description, group.modality, len(slices), shape)


def _source_hash(path) -> str:
    if isinstance(path, InstanceSet):
        return short_hash(path.key)
    if isinstance(path, (str, Path)):
        return short_hash(Path(path).resolve())
    return short_hash("|".join(sorted(str(Path(p).resolve()) for p in path)))


def _as_source(path):
    if isinstance(path, InstanceSet):
        return path
    return Path(path) if isinstance(path, (str, Path)) else [Path(p) for p in path]


def list_dicom_series(path) -> list[SeriesInfo]:
    """Series in a file, folder, zip or list of files, from headers only."""
    return [_info(group) for group in _scan(_as_source(path))]


def _select(groups: list[_Group], series, path: Path) -> _Group:
    if series is None:
        if len(groups) == 1:
            return groups[0]
        names = "; ".join(f"{i}: {g.description} [{g.uid_hash}]" for i, g in enumerate(groups))
        raise VolumeReadError(
            f"{_label(path)} holds {len(groups)} series; choose one with series=<index, hash or "
            f"description>: {names}"
        )
    if isinstance(series, SeriesInfo):
        series = series.uid_hash
    if isinstance(series, (int, np.integer)):
        if not -len(groups) <= series < len(groups):
            raise VolumeReadError(f"{_label(path)}: series index {series} out of range ({len(groups)} series)")
        return groups[series]
    matches = [g for g in groups if g.uid_hash == series or g.description == series]
    if not matches:
        matches = [g for g in groups if g.uid_hash.startswith(str(series))]
    if len(matches) != 1:
        names = "; ".join(f"{g.description} [{g.uid_hash}]" for g in groups)
        what = "matches no" if not matches else "matches several"
        raise VolumeReadError(f"{_label(path)}: {series!r} {what} series: {names}")
    return matches[0]


def _image_type(header) -> list[str]:
    try:
        return [str(v).upper() for v in header.get("ImageType", None) or []]
    except Exception:  # damaged element
        return []


def _load(group: _Group, path: Path) -> Volume:
    slices, affine_lps, uniform, notes = _sorted_geometry(group)
    rows, cols = group.shape
    check_memory(len(slices) * rows * cols * 2, _label(path), f"the series ({len(slices)} slices of {rows} x {cols})")
    data_zyx, kept, failed = _pixels(slices, (rows, cols))
    if not kept:
        first = next(iter(failed.values()))
        raise VolumeReadError(f"{first}" if len(failed) == 1 else f"{_label(path)}: no slice could be decoded ({first})")
    if failed:
        shown = "; ".join(list(failed.values())[:3]) + ("; ..." if len(failed) > 3 else "")
        notes.insert(0, f"left out {len(slices) - len(kept)} slice(s) whose pixel data could not be read: {shown}")
        # geometry of the slices that remain (a gap shows as varying spacing)
        remaining = _Group(key=group.key, slices=kept, description=group.description)
        slices, affine_lps, uniform, more = _sorted_geometry(remaining)
        notes.extend(n for n in more if n not in notes)
    if "MOSAIC" in _image_type(slices[0].header):
        notes.append("Siemens mosaic: the tiled slices are shown as one 2-D image (convert with dcm2niix)")
    for note in notes:
        warnings.warn(f"{group.description}: {note}", stacklevel=3)
    header = slices[0].header
    data, affine = reorient_xyz(data_zyx.transpose(2, 1, 0), lps_to_ras(affine_lps))
    window = next((s.window for s in slices if s.window is not None), None)
    modality = group.modality
    return Volume(
        data=data,
        spacing=spacing_from_affine(affine),
        origin=origin_from_affine(affine),
        affine=affine,
        modality=modality,
        window=window,
        description=group.description,
        metadata={
            "format": "dicom",
            "series_hash": group.uid_hash,
            "source_hash": _source_hash(path),
            "n_slices": len(slices),
            "slice_spacing_uniform": uniform,
            "body_part": _text(header, "BodyPartExamined"),
            "notes": notes,
        },
        plane=stored_slice_plane(lps_to_ras(affine_lps)),
        dicom=_dicom_source(slices, path),
    )


def _dicom_source(slices: list[_Slice], path) -> DicomSource:
    """The study and series UIDs and the headers of the instances the volume was built from (one
    per instance, pixel data already dropped by `_take_pixels`)."""
    headers = list({id(s.header): s.header for s in slices}.values())
    first = headers[0]
    return DicomSource(
        study_uid=_text(first, "StudyInstanceUID"),
        series_uid=_text(first, "SeriesInstanceUID"),
        headers=headers,
        server=path.server if isinstance(path, InstanceSet) else "",
    )


def read_dicom_volumes(path) -> list[Volume]:
    """Every series in a file, folder, zip or list of files."""
    path = _as_source(path)
    return [_load(group, path) for group in _scan(path)]


def read_dicom_series(path, series=None) -> Volume:
    path = _as_source(path)
    return _load(_select(_scan(path), series, path), path)
