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
import os
import warnings
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ._util import VolumeReadError, short_hash
from .orientation import (
    lps_to_ras,
    origin_from_affine,
    reorient_xyz,
    spacing_from_affine,
    stored_slice_plane,
)
from .volume import Volume

DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")
_MAGIC_OFFSET = 128


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


@dataclass
class _Group:
    key: tuple
    slices: list[_Slice] = field(default_factory=list)
    description: str = ""
    modality: str = ""
    uid_hash: str = ""


# -- finding files ------------------------------------------------------------------------------


def has_dicom_magic(head: bytes) -> bool:
    return head[_MAGIC_OFFSET : _MAGIC_OFFSET + 4] == b"DICM"


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(_MAGIC_OFFSET + 4)


def _label(path) -> str:
    """How messages refer to a source: folder names often name the patient, so they never appear."""
    if not isinstance(path, (str, Path)):
        return f"{len(path)} selected files"
    path = Path(path)
    if path.is_dir():
        return "the folder"
    if zipfile.is_zipfile(path):
        return "the zip archive"
    return path.name


def _iter_sources(path, limit: int | None = None, examine: int | None = None):
    """(name, source) for every candidate DICOM file under a file, folder, zip or list of files.

    limit stops after that many DICOM files; examine after that many files looked at (so the
    reader hook stays quick on large folders that hold no DICOM at all).
    """
    if not isinstance(path, (str, Path)):
        for item in path:
            yield Path(item).name, Path(item)
        return
    path = Path(path)
    if path.is_dir():
        found = examined = 0
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                examined += 1
                if examine and examined > examine:
                    return
                file = Path(root) / name
                try:
                    head = _read_head(file)
                except OSError:
                    continue
                if has_dicom_magic(head) or name.lower().endswith(DICOM_SUFFIXES):
                    yield name, file  # base name only: folder names may name the patient
                    found += 1
                    if limit and found >= limit:
                        return
    elif zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                found = 0
                for examined, info in enumerate(archive.infolist(), start=1):
                    if examine and examined > examine:
                        return
                    if info.is_dir():
                        continue
                    with archive.open(info) as member:
                        head = member.read(_MAGIC_OFFSET + 4)
                    if has_dicom_magic(head) or info.filename.lower().endswith(DICOM_SUFFIXES):
                        yield Path(info.filename).name, archive.read(info)
                        found += 1
                        if limit and found >= limit:
                            return
        except zipfile.BadZipFile as err:
            raise VolumeReadError(f"{path.name}: damaged zip archive ({err})") from err
    elif path.is_file():
        yield path.name, path
    else:
        raise FileNotFoundError(path)


def looks_like_dicom(path, examine: int = 2000) -> bool:
    """Cheap check for napari's reader hook: is there a DICOM file here (among the first few)?"""
    path = Path(path)
    try:
        if path.is_file() and not zipfile.is_zipfile(path):
            return has_dicom_magic(_read_head(path)) or path.name.lower().endswith(DICOM_SUFFIXES)
        return any(True for _ in _iter_sources(path, limit=1, examine=examine))
    except (OSError, VolumeReadError):
        return False


# -- headers ------------------------------------------------------------------------------------


def _dcmread(name: str, source, pixels: bool) -> pydicom.Dataset:
    try:
        if isinstance(source, (bytes, bytearray)):
            return pydicom.dcmread(io.BytesIO(source), stop_before_pixels=not pixels)
        # Deferring large elements leaves pixel data on disk until a series is actually loaded.
        return pydicom.dcmread(source, defer_size=None if pixels else "64 KB")
    except InvalidDicomError as err:
        raise VolumeReadError(f"{name}: not a DICOM file ({err})") from err
    except Exception as err:  # truncated or malformed element data
        raise VolumeReadError(f"{name}: damaged DICOM file ({err})") from err


def _first(value):
    if value is None:
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return value[0] if len(value) else None
    return value


def _functional_item(ds, frame: int, sequence: str):
    """The item of a functional-group sequence for one frame: per-frame first, then shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame) and sequence in per_frame[frame]:
        return per_frame[frame][sequence][0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and sequence in shared[0]:
        return shared[0][sequence][0]
    return None


def _floats(value, n):
    if value is None:
        return None
    try:
        out = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return out if out.size == n else None


def _window(item) -> tuple[float, float] | None:
    if item is None:
        return None
    center, width = _first(item.get("WindowCenter")), _first(item.get("WindowWidth"))
    if center is None or width is None or float(width) <= 0:
        return None
    return float(center), float(width)


def _frame_slices(name, source, ds) -> list[_Slice]:
    """Describe every frame of one object (one slice for classic single-frame files)."""
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    instance = int(ds.get("InstanceNumber", 0) or 0)
    slices = []
    for frame in range(n_frames):
        position = _floats(ds.get("ImagePositionPatient"), 3)
        orientation = _floats(ds.get("ImageOrientationPatient"), 6)
        spacing_item, rescale_item, voi_item = ds, ds, ds
        thickness = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
        if enhanced:
            plane = _functional_item(ds, frame, "PlanePositionSequence")
            if plane is not None:
                position = _floats(plane.get("ImagePositionPatient"), 3)
            plane_orientation = _functional_item(ds, frame, "PlaneOrientationSequence")
            if plane_orientation is not None:
                orientation = _floats(plane_orientation.get("ImageOrientationPatient"), 6)
            measures = _functional_item(ds, frame, "PixelMeasuresSequence")
            if measures is not None:
                spacing_item = measures
                thickness = measures.get("SpacingBetweenSlices") or measures.get("SliceThickness") or thickness
            rescale_item = _functional_item(ds, frame, "PixelValueTransformationSequence") or ds
            voi_item = _functional_item(ds, frame, "FrameVOILUTSequence") or ds
        pixel_spacing = _floats(spacing_item.get("PixelSpacing"), 2)
        if pixel_spacing is None:
            pixel_spacing = _floats(ds.get("ImagerPixelSpacing"), 2)
        slope = rescale_item.get("RescaleSlope", None)
        intercept = rescale_item.get("RescaleIntercept", None)
        slices.append(
            _Slice(
                source=source,
                name=name,
                header=ds,
                frame=frame if (n_frames > 1 or enhanced) else None,
                position=position,
                orientation=orientation,
                pixel_spacing=tuple(pixel_spacing) if pixel_spacing is not None else (1.0, 1.0),
                thickness=float(thickness) if thickness else None,
                slope=float(slope) if slope not in (None, "") else 1.0,
                intercept=float(intercept) if intercept not in (None, "") else 0.0,
                window=_window(voi_item),
                instance=instance * 100000 + frame,
            )
        )
    return slices


def _is_image(ds) -> str | None:
    """None for a greyscale image; otherwise why it is skipped."""
    if "PixelData" not in ds:
        sop = getattr(ds.get("SOPClassUID"), "name", None) or "no pixel data"
        return str(sop)
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return "colour image"
    return None


def _should_have_pixels(ds) -> bool:
    meta = getattr(ds, "file_meta", None) or {}
    sop = getattr(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID"), "name", "")
    return "PixelData" not in ds and ("Rows" in ds or "Image Storage" in str(sop))


def _scan(path) -> list[_Group]:
    """Read headers only and group them into series.

    A single damaged file is an error; in a folder, zip or selection it is skipped with a
    warning so the other series still open.
    """
    single = isinstance(path, (str, Path)) and Path(path).is_file() and not zipfile.is_zipfile(path)
    label = _label(path)
    groups: dict[tuple, _Group] = {}
    skipped: dict[str, int] = defaultdict(int)
    unreadable: list[str] = []
    n_files = 0
    for name, source in _iter_sources(path):
        n_files += 1
        # Zip members are in memory already; files on disk keep their pixels there until loaded.
        try:
            ds = _dcmread(name, source, pixels=isinstance(source, (bytes, bytearray)))
        except VolumeReadError as err:
            if single:
                raise
            unreadable.append(str(err))
            continue
        reason = _is_image(ds)
        if reason and _should_have_pixels(ds):
            message = f"{name}: image object without pixel data (truncated or damaged file)"
            if single:
                raise VolumeReadError(message)
            unreadable.append(message)
            continue
        if reason:
            skipped[reason] += 1
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or f"no-series-uid:{name}")
        slices = _frame_slices(name, source, ds)
        if len(slices) > 1:
            key = (uid, str(ds.get("SOPInstanceUID", name)))
        else:
            orientation = slices[0].orientation
            key = (
                uid,
                int(ds.Rows),
                int(ds.Columns),
                None if orientation is None else tuple(np.round(orientation, 3)),
            )
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(key=key, uid_hash=short_hash(uid))
            group.modality = str(ds.get("Modality", "") or "OT")
            group.description = str(
                ds.get("SeriesDescription", "") or ds.get("ProtocolName", "") or ""
            ).strip()
        group.slices.extend(slices)
    if skipped:
        summary = ", ".join(f"{count} x {reason}" for reason, count in sorted(skipped.items()))
        warnings.warn(f"{label}: skipped DICOM objects without a greyscale image ({summary})", stacklevel=3)
    if unreadable:
        shown = "; ".join(unreadable[:3]) + ("; ..." if len(unreadable) > 3 else "")
        warnings.warn(f"{label}: skipped {len(unreadable)} unreadable files: {shown}", stacklevel=3)
    if not groups:
        raise VolumeReadError(
            f"{label}: no DICOM image series found ({n_files} DICOM files looked at"
            + (f"; unreadable: {unreadable[0]}" if unreadable else "")
            + ")"
        )
    return _name_groups(list(groups.values()))


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
        return pydicom.pixels.apply_modality_lut(raw, item.header)
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


def _pixels(slices: list[_Slice], shape: tuple[int, int]) -> np.ndarray:
    """Stack the frames in the given order, applying each frame's rescale once.

    The output starts as int16 (what CT in HU needs) and is widened only if a frame does not fit,
    so a series costs one volume-sized allocation in the common case.
    """
    out = None
    frames_of, frames = None, None
    for index, item in enumerate(slices):
        if item.frame is None:
            raw = _take_pixels(item)
        else:
            if frames_of is not item.header:
                frames_of, frames = item.header, _take_pixels(item)
                frames = frames[None] if frames.ndim == 2 else frames
            raw = frames[item.frame]
        if raw.shape != shape:
            raise VolumeReadError(f"{item.name}: frame is {raw.shape}, the series is {shape}")
        values = _rescale(raw, item)
        if out is None:
            dtype = np.dtype(np.int16) if values.dtype.kind in "iu" else np.dtype(np.float32)
            if not _fits(values, dtype):
                dtype = np.result_type(values.dtype, np.int16)
            out = np.empty((len(slices), *shape), dtype=dtype)
        elif not _fits(values, out.dtype):
            wider = np.float32 if values.dtype.kind == "f" else np.result_type(values.dtype, out.dtype)
            out = out.astype(wider)
        out[index] = values
    return out


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
    except Exception as err:
        raise VolumeReadError(f"{name}: pixel data could not be decoded ({err})") from err


# -- public -------------------------------------------------------------------------------------


def _info(group: _Group) -> SeriesInfo:
    slices, affine, _, _ = _sorted_geometry(group)
    header = slices[0].header
    shape = _display_shape(len(slices), int(header.Rows), int(header.Columns), affine)
    return SeriesInfo(group.uid_hash, group.description, group.modality, len(slices), shape)


def _source_hash(path) -> str:
    if isinstance(path, (str, Path)):
        return short_hash(Path(path).resolve())
    return short_hash("|".join(sorted(str(Path(p).resolve()) for p in path)))


def _as_source(path):
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


def _load(group: _Group, path: Path) -> Volume:
    slices, affine_lps, uniform, notes = _sorted_geometry(group)
    if "MOSAIC" in [str(v).upper() for v in slices[0].header.get("ImageType", [])]:
        notes.append("Siemens mosaic: the tiled slices are shown as one 2-D image (convert with dcm2niix)")
    for note in notes:
        warnings.warn(f"{group.description}: {note}", stacklevel=3)
    header = slices[0].header
    rows, cols = int(header.Rows), int(header.Columns)
    data_zyx = _pixels(slices, (rows, cols))
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
            "body_part": str(header.get("BodyPartExamined", "") or ""),
            "acquisition_plane": stored_slice_plane(lps_to_ras(affine_lps)),
            "notes": notes,
        },
    )


def read_dicom_volumes(path) -> list[Volume]:
    """Every series in a file, folder, zip or list of files."""
    path = _as_source(path)
    return [_load(group, path) for group in _scan(path)]


def read_dicom_series(path, series=None) -> Volume:
    path = _as_source(path)
    return _load(_select(_scan(path), series, path), path)
