"""Format dispatch: one entry point for NIfTI files, DICOM files, folders and zip archives."""

from __future__ import annotations

import os
from pathlib import Path

from ._util import VolumeReadError, short_hash
from .dicom import SeriesInfo, list_dicom_series, looks_like_dicom, read_dicom_series, read_dicom_volumes
from .nifti import is_nifti, read_nifti
from .volume import Volume


def _nifti_files(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(Path(root) / name for name in sorted(files) if is_nifti(name))
    return found


def _nifti_info(path: Path, volume: Volume | None = None) -> SeriesInfo:
    volume = volume or read_nifti(path)
    return SeriesInfo(
        uid_hash=short_hash(path.resolve()),
        description=volume.description,
        modality=volume.modality,
        n_slices=volume.shape[0],
        shape=volume.shape,
    )


def is_supported(path) -> bool:
    """Whether `path` is something we read (cheap: looks at names and a few file headers)."""
    path = Path(path)
    if is_nifti(path):
        return path.exists()
    if path.is_dir():
        return looks_like_dicom(path) or bool(_nifti_files(path))
    return path.is_file() and looks_like_dicom(path)


def read_volumes(path) -> list[Volume]:
    """Every volume in a NIfTI file, DICOM file, folder or zip: one per series, in a stable order."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if is_nifti(path):
        return [read_nifti(path)]
    volumes = []
    if path.is_dir():
        volumes.extend(read_nifti(p) for p in _nifti_files(path))
        if looks_like_dicom(path):
            volumes.extend(read_dicom_volumes(path))
        if not volumes:
            raise VolumeReadError(f"{path.name}: no NIfTI or DICOM images in this folder")
        return volumes
    return read_dicom_volumes(path)


def list_series(path) -> list[SeriesInfo]:
    """What `read_volumes` would return, from headers only (for a series picker)."""
    path = Path(path)
    if is_nifti(path):
        return [_nifti_info(path)]
    infos = []
    if path.is_dir():
        infos.extend(_nifti_info(p) for p in _nifti_files(path))
        if looks_like_dicom(path):
            infos.extend(list_dicom_series(path))
        if not infos:
            raise VolumeReadError(f"{path.name}: no NIfTI or DICOM images in this folder")
        return infos
    return list_dicom_series(path)


def read_volume(path, series: int | str | SeriesInfo | None = None) -> Volume:
    """One volume. With several series, `series` picks one by index, hash or description;
    leaving it out then raises an error that lists them."""
    path = Path(path)
    if is_nifti(path):
        return read_nifti(path)
    if path.is_dir() and _nifti_files(path):
        volumes = read_volumes(path)
        if series is None and len(volumes) == 1:
            return volumes[0]
        infos = list_series(path)
        if series is None:
            names = "; ".join(f"{i}: {v.description}" for i, v in enumerate(infos))
            raise VolumeReadError(f"{path.name} holds {len(infos)} series; choose one with series=: {names}")
        if isinstance(series, SeriesInfo):
            series = series.uid_hash
        if isinstance(series, int):
            return volumes[series]
        for info, volume in zip(infos, volumes):
            if series in (info.uid_hash, info.description):
                return volume
        raise VolumeReadError(f"{path.name}: {series!r} matches no series")
    return read_dicom_series(path, series)
