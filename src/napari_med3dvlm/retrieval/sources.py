"""Finding the volumes under a folder tree: one entry per NIfTI file and one per DICOM series.

Each entry gets a stable key (its path relative to the indexed root) and a cheap content hash, so a
re-index can tell unchanged, changed, new and deleted volumes apart without reading any pixels.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from napari_med3dvlm.io import is_regular_file, short_hash

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Bytes read from the start and the end of each file for the content hash.
HASH_SAMPLE_BYTES = 1 << 20
#: Files whose names say they are never images (reports, notes, index sidecars).
_NEVER_IMAGES = (".txt", ".json", ".csv", ".md", ".npy", ".npz", ".png", ".jpg", ".yaml", ".yml", ".py")


@dataclass(frozen=True)
class VolumeSource:
    """One volume to index: a NIfTI file, or the files of one DICOM series."""

    key: str  # posix path relative to the root; "dir#<series hash>" for a DICOM series
    path: Path  # what a reader opens: the NIfTI file, or the series' folder
    files: tuple[Path, ...]
    kind: str  # "nifti" or "dicom"
    series: str = ""  # the reader's one-way hash of the SeriesInstanceUID (DICOM only)

    @property
    def relative_path(self) -> str:
        return self.key.split("#", 1)[0]


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def is_label_map(path: Path) -> bool:
    """A NIfTI whose header declares it a label map (intent "label"): a segmentation, not a scan."""
    try:
        import nibabel as nib

        return nib.load(str(path)).header.get_intent()[0] == "label"
    except Exception:  # unreadable files are the indexer's to report
        return False


def _dicom_series_uid(path: Path) -> str | None:
    """The SeriesInstanceUID of a DICOM file, reading the header only; None if not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError, EOFError):
        return None
    uid = getattr(header, "SeriesInstanceUID", None)
    return str(uid) if uid else "unknown-series"


def scan_folder(root: str | os.PathLike) -> list[VolumeSource]:
    """All NIfTI files and DICOM series under ``root``, sorted by key.

    Hidden files and folders (``.name``) are skipped, so a LanceDB index kept inside the collection
    is not scanned.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    sources: list[VolumeSource] = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not d.endswith(".lance"))
        folder = Path(folder)
        series: dict[str, list[Path]] = defaultdict(list)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = folder / name
            if not is_regular_file(path):  # pipes, devices, sockets: opening one can block forever
                continue
            if is_nifti(path):
                if is_label_map(path):
                    continue
                rel = path.relative_to(root).as_posix()
                sources.append(VolumeSource(key=rel, path=path, files=(path,), kind="nifti"))
            elif not name.lower().endswith(_NEVER_IMAGES):
                uid = _dicom_series_uid(path)
                if uid is not None:
                    series[uid].append(path)
        rel_dir = folder.relative_to(root).as_posix()
        for uid, files in series.items():
            tag = short_hash(uid)  # the reader's series hash; never the UID itself
            sources.append(
                VolumeSource(key=f"{rel_dir}#{tag}", path=folder, files=tuple(files), kind="dicom", series=tag)
            )
    return sorted(sources, key=lambda s: s.key)


def content_hash(files) -> str:
    """Fast change detector: name, size and mtime of every file, plus sha256 of the first and last
    MiB of up to three files (first, middle and last of a series).

    Reading whole CT series on every re-index would cost as much as copying the collection; edits,
    replacements and truncation change size or mtime anyway, and the byte sample catches a file
    swapped in with its old timestamp restored.
    """
    paths = sorted(Path(f) for f in files)
    sampled = {paths[0], paths[len(paths) // 2], paths[-1]} if paths else set()
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}|".encode())
        if path not in sampled:
            continue
        with open(path, "rb") as handle:
            digest.update(handle.read(HASH_SAMPLE_BYTES))
            if stat.st_size > 2 * HASH_SAMPLE_BYTES:
                handle.seek(-HASH_SAMPLE_BYTES, os.SEEK_END)
                digest.update(handle.read(HASH_SAMPLE_BYTES))
    return digest.hexdigest()[:32]
