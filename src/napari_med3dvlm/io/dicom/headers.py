"""Headers: reading them without pixels, validating every value used (`_Values`), describing each
frame (`_Slice`) and grouping the frames into series (`_scan`)."""

from __future__ import annotations

import io
import math
import os
import warnings
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from .._util import VolumeReadError, format_bytes, is_regular_file, short_hash
from .records import _Group, _Slice
from .sources import _iter_sources, _label, _why

# pydicom's reading validation warns with the raw bytes of a malformed element, and a damaged length
# field makes that "value" run on over the following elements, patient name and ID included (found by
# tests/hardening/test_fuzz.py). This reader validates every value it uses itself (`_Values`), so
# pydicom's reading validation is turned off; its writing validation is left as it is.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


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
