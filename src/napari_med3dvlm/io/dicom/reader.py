"""The DICOM reader's entry points: list the series of a source from headers only, read one series
(only its pixels are decoded) or every series."""

from __future__ import annotations

import warnings
from pathlib import Path

from .._util import VolumeReadError, check_memory, short_hash
from ..orientation import lps_to_ras, origin_from_affine, reorient_xyz, spacing_from_affine, stored_slice_plane
from ..selection import select_series
from ..volume import DicomSource, Volume
from .geometry import _display_shape, _sorted_geometry
from .headers import _scan, _text
from .pixels import _pixels
from .records import InstanceSet, SeriesInfo, _Group, _Slice
from .sources import _label


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
    """One series, picked by `select_series` from the headers; only its pixels are decoded."""
    path = _as_source(path)
    groups = _scan(path)
    return _load(groups[select_series(groups, series, _label(path))], path)
