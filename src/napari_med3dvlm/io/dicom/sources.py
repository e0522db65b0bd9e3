"""Finding DICOM files: in a file, a folder (searched recursively), a zip archive (streamed, with
caps on what its members inflate to), a list of files, or instances already in memory."""

from __future__ import annotations

import os
import warnings
import zipfile
import zlib
from pathlib import Path

from .._util import (
    MEMORY_SHARE,
    VolumeReadError,
    available_memory,
    format_bytes,
    is_regular_file,
    not_a_regular_file,
)
from .records import InstanceSet

DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")
_MAGIC_OFFSET = 128

#: A zip member over `ZIP_RATIO_FLOOR` bytes that inflates more than this many times is refused as a
#: likely zip bomb (DICOM compresses a few times, rarely a hundred).
ZIP_RATIO_LIMIT = 200
ZIP_RATIO_FLOOR = 64 << 20

_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError)


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


def is_unreadable_zip(path) -> bool:
    """Whether ``path`` is a regular file named .zip whose table of contents cannot be read (cut short
    or damaged). The napari reader claims such a file so that opening it says what is wrong with it
    instead of that no reader opens it."""
    path = Path(path)
    if not path.name.lower().endswith(".zip") or not is_regular_file(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except _ZIP_ERRORS:
        return True
    return False


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
