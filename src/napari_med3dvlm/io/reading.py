"""Format dispatch: one entry point for NIfTI files, DICOM files, folders, zip archives and lists
of files (loose DICOM files in a list are grouped into series together, as a folder would be).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ._util import VolumeReadError, is_regular_file, not_a_regular_file
from .dicom import (
    SeriesInfo,
    list_dicom_series,
    looks_like_dicom,
    read_dicom_series,
    read_dicom_volumes,
)
from .nifti import is_nifti, nifti_series_info, read_nifti
from .selection import select_series
from .volume import Volume


def _nifti_files(folder: Path, examine: int | None = None) -> list[Path]:
    found, examined = [], 0
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            examined += 1
            if examine and examined > examine:
                return found
            if is_nifti(name) and is_regular_file(Path(root) / name):  # never open a pipe or device
                found.append(Path(root) / name)
    return found


def _parts(path) -> tuple[list[Path], list, list[Path]]:
    """Split a path or list of paths into NIfTI files, DICOM sources and loose DICOM files."""
    items = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    nifti, dicom_sources, loose = [], [], []
    for item in items:
        if not item.exists():
            raise FileNotFoundError(f"no such file or folder: {item}")
        if not item.is_dir() and not is_regular_file(item):
            raise not_a_regular_file(item.name)
        if is_nifti(item):
            nifti.append(item)
        elif item.is_dir():
            nifti.extend(_nifti_files(item))
            if looks_like_dicom(item, examine=None):
                dicom_sources.append(item)
        elif isinstance(path, (str, Path)):
            dicom_sources.append(item)
        else:
            loose.append(item)
    if loose:
        dicom_sources.append(loose if len(loose) > 1 else loose[0])
    return nifti, dicom_sources, items


def _label(items: list[Path]) -> str:
    """How messages name what was opened (never a folder's name: it may name the patient)."""
    if len(items) == 1:
        return "the folder" if items[0].is_dir() else items[0].name
    return f"{len(items)} selected paths"


def _nothing_found(items) -> VolumeReadError:
    return VolumeReadError(f"{_label(items)}: no NIfTI or DICOM images found")


def is_supported(path) -> bool:
    """Whether `path` is something we read (cheap: looks at names and a few file headers)."""
    path = Path(path)
    if is_nifti(path):
        return path.is_file()
    if path.is_dir():
        return looks_like_dicom(path) or bool(_nifti_files(path, examine=2000))
    return path.is_file() and looks_like_dicom(path)


def _per_source(nifti, dicom_sources, items, read_one, read_many) -> list[tuple]:
    """(source, what it gave) for every source that gave something; an unreadable one is skipped with
    a warning when others load (one bad file must not hide a folder's good volumes), and raised when
    nothing loads."""
    results, errors = [], []
    for source, read in [(p, read_one) for p in nifti] + [(s, read_many) for s in dicom_sources]:
        try:
            found = read(source)
        except VolumeReadError as err:
            errors.append(err)
            continue
        results.append((source, found if isinstance(found, list) else [found]))
    if errors and not results:
        raise errors[0]
    for err in errors:
        warnings.warn(f"skipped: {err}", stacklevel=4)
    if not any(found for _, found in results):
        raise _nothing_found(items)
    return results


def _each(nifti, dicom_sources, items, read_one, read_many) -> list:
    """Every result of every source, in order (see `_per_source`)."""
    return [result for _, found in _per_source(nifti, dicom_sources, items, read_one, read_many) for result in found]


def read_volumes(path) -> list[Volume]:
    """Every volume in a NIfTI file, DICOM file, folder, zip (or a list of those): one per
    series, NIfTI files first, then DICOM series in a stable order."""
    nifti, dicom_sources, items = _parts(path)
    return _each(nifti, dicom_sources, items, read_nifti, read_dicom_volumes)


def list_series(path) -> list[SeriesInfo]:
    """What `read_volumes` would return, in the same order, from headers only (for a picker)."""
    nifti, dicom_sources, items = _parts(path)
    return _each(nifti, dicom_sources, items, nifti_series_info, list_dicom_series)


def read_volume(path, series: int | str | SeriesInfo | None = None) -> Volume:
    """One volume, picked by `select_series` (index in `list_series` order, `SeriesInfo`, uid_hash,
    description or SeriesInstanceUID) from the headers; leaving it out with several series raises an
    error that lists them. Only the chosen series is decoded."""
    nifti, dicom_sources, items = _parts(path)
    if not nifti and len(dicom_sources) == 1:
        return read_dicom_series(dicom_sources[0], series)
    if len(nifti) == 1 and not dicom_sources and series in (None, 0):
        return read_nifti(nifti[0])
    listed = [
        (source, index, info)
        for source, infos in _per_source(nifti, dicom_sources, items, nifti_series_info, list_dicom_series)
        for index, info in enumerate(infos)
    ]
    source, index, _ = listed[select_series([info for *_, info in listed], series, _label(items))]
    if source in nifti:
        return read_nifti(source)
    return read_dicom_series(source, index)
