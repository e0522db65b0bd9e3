"""A hostile corpus: damaged and odd NIfTI files, DICOM files and series, folders and zip archives,
each built from a small valid volume and marked with what the readers must do with it.

Nothing here is kept in git: `build_corpus` writes every case into a temporary folder. A case either
must be refused (our error, `VolumeReadError`, whose message names the file and matches `message`)
or must load (shape, spacing, voxel values, and the warning expected). `model` says whether the
model commands take it (a one-slice volume loads in the viewer but is refused by `report`).
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import socket
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from napari_med3dvlm.io.dicom_write import write_dicom_series

#: Identifiers planted in every DICOM file of the corpus; none may appear in a message or warning.
PATIENT_TAGS = {"PatientName": "ROE^RICHARD", "PatientID": "PID-40417", "PatientBirthDate": "19580607"}

#: The valid volume every case starts from: (z, y, x) in HU, CT-like (air, tissue, bone).
SHAPE = (10, 16, 20)
SPACING = (2.5, 0.8, 0.7)  # (z, y, x) mm


def base_hu() -> np.ndarray:
    rng = np.random.default_rng(15)
    data = rng.integers(-100, 200, SHAPE).astype(np.int16)
    data[:, :3, :] = -1000  # air
    data[:, -3:, :] = 1200  # bone
    return data


@dataclass
class Case:
    id: str
    kind: str  # "nifti", "dicom", "folder" or "zip"
    build: Callable[[Path], Path]  # writes the case under a folder, returns the path to open
    expect: str  # "refuse" or "load"
    message: str = ""  # regex the refusal (or, for "load", a warning) must match
    shape: tuple | None = None  # loaded (z, y, x)
    spacing: tuple | None = None  # loaded (z, y, x) mm
    values: str = "exact"  # "exact" (the base volume), "same" (its voxels, any order), "any", or a name below
    warns: str | None = None  # regex one warning must match
    model: bool = True  # whether report/ask/search take it when it loads
    timeout: float = 20.0

    def __repr__(self) -> str:
        return self.id


CASES: list[Case] = []


def case(id, kind, expect, **kwargs):
    def register(build):
        CASES.append(Case(id=id, kind=kind, build=build, expect=expect, **kwargs))
        return build

    return register


def refuse(id, kind, message, **kwargs):
    return case(id, kind, "refuse", message=message, **kwargs)


def load(id, kind, **kwargs):
    kwargs.setdefault("shape", SHAPE)
    kwargs.setdefault("spacing", SPACING)
    return case(id, kind, "load", **kwargs)


# -- NIfTI ----------------------------------------------------------------------------------------


def nifti_bytes(data_zyx=None, affine=None, dtype=None, **fields) -> bytes:
    """An uncompressed NIfTI-1 image of the base volume; header fields then overwritten as given."""
    data = base_hu() if data_zyx is None else data_zyx
    xyz = np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0))
    if dtype is not None:
        xyz = xyz.astype(dtype)
    if affine is None:
        affine = np.diag([-SPACING[2], -SPACING[1], SPACING[0], 1.0])  # stored L, P, S: the display order
    image = nib.Nifti1Image(xyz, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    raw = image.to_bytes()
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=False)
    for key, value in fields.items():
        header[key] = value
    return header.binaryblock + raw[348:]


def write_nifti(path: Path, raw: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw, compresslevel=1) if path.name.endswith(".gz") else raw)
    return path


def nifti_case(id, expect, *, exts=(".nii", ".nii.gz"), raw=None, **kwargs):
    """The same header damage as .nii and .nii.gz: two cases."""
    fields = kwargs.pop("fields", {})
    for ext in exts:
        def build(folder, ext=ext):
            return write_nifti(folder / f"{id}{ext}", raw() if raw else nifti_bytes(**fields))

        suffix = "gz" if ext.endswith(".gz") else "nii"
        extra = dict(kwargs)
        if expect == "refuse":
            CASES.append(Case(id=f"nifti-{id}-{suffix}", kind="nifti", build=build, expect="refuse", **extra))
        else:
            extra.setdefault("shape", SHAPE)
            extra.setdefault("spacing", SPACING)
            CASES.append(Case(id=f"nifti-{id}-{suffix}", kind="nifti", build=build, expect="load", **extra))


nifti_case("valid", "load")
nifti_case("empty", "refuse", raw=lambda: b"", message="not a readable NIfTI")
nifti_case("zeros", "refuse", raw=lambda: bytes(4096), message="not a readable NIfTI|damaged gzip")
nifti_case("short-header", "refuse", raw=lambda: nifti_bytes()[:100], message="not a readable NIfTI|damaged gzip")
nifti_case("dim-zero", "refuse", fields={"dim": [3, 20, 0, 10, 1, 1, 1, 1]}, message="every dimension must be at least 1")
nifti_case("dim-negative", "refuse", fields={"dim": [3, -20, 16, 10, 1, 1, 1, 1]}, message="every dimension")
nifti_case("dim-huge", "refuse", fields={"dim": [3, 30000, 30000, 30000, 1, 1, 1, 1]},
           message="truncated or its header is damaged|needs .* of memory")
nifti_case("four-d", "refuse", fields={"dim": [4, 20, 16, 5, 2, 1, 1, 1]}, message="expected a 3-D volume")
nifti_case("two-d", "refuse", fields={"dim": [2, 20, 16, 1, 1, 1, 1, 1]}, message="expected a 3-D volume")
nifti_case("complex", "refuse", fields={"datatype": 32, "bitpix": 64}, message="complex-valued voxels")
nifti_case("rgb", "refuse", fields={"datatype": 128, "bitpix": 24}, message=r"colour \(RGB\)")
nifti_case("unknown-dtype", "refuse", fields={"datatype": 1234}, message="data code 1234")
nifti_case("bad-magic", "refuse", fields={"magic": b"xx1"}, message="not a readable NIfTI")
nifti_case("bad-quaternion", "refuse", fields={"quatern_b": 5.0, "sform_code": 0}, message="not a readable NIfTI")
nifti_case("infinite-intercept", "refuse", fields={"scl_slope": 2.0, "scl_inter": np.inf}, message="invalid intercept")
nifti_case("vox-offset-huge", "refuse", fields={"vox_offset": 2.0**40},
           message="truncated or its header is damaged|image data could not be read|image data ends after")
nifti_case("data-cut", "refuse", exts=(".nii",), raw=lambda: nifti_bytes()[:-50], message="truncated")
# header problems nibabel fixes or we work around: they load, with a warning that says so
nifti_case("nan-sform", "load", fields={"srow_x": [np.nan, 0, 0, 0]}, warns="sform affine has NaN.*qform is used")
nifti_case("nan-sform-no-qform", "load", fields={"srow_x": [np.nan, 0, 0, 0], "qform_code": 0},
           warns="placed by its voxel sizes", values="same", spacing=None)
nifti_case("zero-sform", "load", fields={"srow_x": [0, 0, 0, 0], "srow_y": [0, 0, 0, 0], "srow_z": [0, 0, 0, 0],
           "qform_code": 0}, warns="voxel size of zero", values="same", spacing=None)
nifti_case("degenerate-sform", "load", fields={"srow_x": [-0.7, -0.8, 0, 0], "srow_y": [-0.7, -0.8, 0, 0],
           "qform_code": 0}, warns="degenerate axes", values="same", spacing=None)
nifti_case("infinite-sform", "load", fields={"srow_z": [0, 0, np.inf, 0], "qform_code": 0},
           warns="NaN or infinite", values="same", spacing=None)
nifti_case("nan-quaternion", "load", fields={"quatern_c": np.nan, "sform_code": 0},
           warns="qform affine has NaN", values="same", spacing=None)
nifti_case("zero-pixdim", "load", fields={"pixdim": [1, 0, 0, 0, 1, 0, 0, 0], "sform_code": 0, "qform_code": 0},
           warns="should be non-zero", values="same", spacing=(1.0, 1.0, 1.0))
nifti_case("nan-pixdim", "load", fields={"pixdim": [1, np.nan, 0.8, 2.5, 1, 0, 0, 0], "sform_code": 0,
           "qform_code": 0}, warns="non-finite values; 1 mm", values="same", spacing=(2.5, 0.8, 1.0))
nifti_case("negative-pixdim", "load", fields={"pixdim": [1, -0.7, 0.8, 2.5, 1, 0, 0, 0], "sform_code": 0,
           "qform_code": 0}, warns="should be positive", values="same")
nifti_case("sizeof-hdr", "load", fields={"sizeof_hdr": 2**30}, warns="sizeof_hdr should be 348")
nifti_case("nan-slope", "load", fields={"scl_slope": np.nan})  # NIfTI: no scaling
nifti_case("scaled", "load", fields={"scl_slope": 2.0, "scl_inter": -10.0}, values="scaled")
nifti_case("one-slice", "load", raw=lambda: nifti_bytes(base_hu()[:1]), shape=(1, 16, 20), values="first-slice",
           model=False)
nifti_case("float-nan", "load", raw=lambda: nifti_bytes(base_hu().astype(np.float32) * np.where(
    np.arange(10)[:, None, None] == 4, np.nan, 1).astype(np.float32)), values="nan-slice", warns="voxels are NaN")
nifti_case("big-endian", "load", raw=lambda: nifti_bytes(dtype=">i2"))
nifti_case("trailing-singleton", "load", fields={"dim": [4, 20, 16, 10, 1, 1, 1, 1]})


def _gz_of_valid() -> bytes:
    return gzip.compress(nifti_bytes(), compresslevel=6)


def _gz_write(name, mutate):
    def build(folder):
        path = folder / name
        path.write_bytes(mutate(bytearray(_gz_of_valid())))
        return path

    return build


def _written(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _flip(data: bytearray, index: int) -> bytearray:
    data[index] ^= 0xFF
    return data


CASES += [
    Case("gzip-crc", "nifti", _gz_write("crc.nii.gz", lambda b: _flip(b, len(b) - 8)), "refuse",
         message="crc.nii.gz: damaged gzip data.*CRC"),
    Case("gzip-length", "nifti", _gz_write("length.nii.gz", lambda b: _flip(b, len(b) - 2)), "refuse",
         message="length.nii.gz: damaged gzip data"),
    Case("gzip-data-byte", "nifti", _gz_write("byte.nii.gz", lambda b: _flip(b, len(b) * 3 // 4)), "refuse",
         message="byte.nii.gz: damaged gzip data|image data"),
    Case("gzip-cut", "nifti", _gz_write("cut.nii.gz", lambda b: b[: len(b) * 2 // 3]), "refuse",
         message="cut.nii.gz: damaged gzip data|ends after"),
    Case("gzip-trailing-junk", "nifti", _gz_write("junk.nii.gz", lambda b: b + b"junk" * 8), "refuse",
         message="junk.nii.gz: damaged gzip data"),
    Case("gzip-not-gzip", "nifti", lambda folder: write_nifti(folder / "plain.nii", nifti_bytes()).rename(
        folder / "plain.nii.gz") or folder / "plain.nii.gz", "refuse", message="plain.nii.gz: .*(not a gzip|damaged)"),
    Case("gzip-garbage", "nifti", lambda folder: _written(folder / "garbage.nii.gz", bytes(range(256)) * 8),
         "refuse", message="garbage.nii.gz"),
    Case("gzip-two-members", "nifti", lambda folder: _written(folder / "members.nii.gz", gzip.compress(
        nifti_bytes()[:1000]) + gzip.compress(nifti_bytes()[1000:])), "load", shape=SHAPE, spacing=SPACING),
]


def _fifo(name):
    def build(folder):
        path = folder / name
        os.mkfifo(path)
        return path

    return build


CASES += [
    Case("nifti-fifo", "nifti", _fifo("pipe.nii"), "refuse", message="pipe.nii: not a regular file"),
    Case("nifti-fifo-gz", "nifti", _fifo("pipe.nii.gz"), "refuse", message="pipe.nii.gz: not a regular file"),
]


# -- DICOM ----------------------------------------------------------------------------------------


_SERIES_CACHE: dict[tuple, Path] = {}
_CACHE_ROOT: list = [None]  # where build_corpus keeps the written series it copies from


def write_series(folder: Path, **kwargs) -> list[Path]:
    """The base volume as a 10-slice DICOM series (IM00000.dcm ... IM00009.dcm, slice k in file k),
    with identifiers planted; written once per set of options, then copied."""
    kwargs.setdefault("spacing", SPACING)
    kwargs.setdefault("window", (40, 400))
    kwargs.setdefault("description", "Corpus CT")
    key = tuple(sorted(kwargs.items()))
    if key not in _SERIES_CACHE or not _SERIES_CACHE[key].exists():
        import tempfile

        source = Path(tempfile.mkdtemp(prefix="series-", dir=_CACHE_ROOT[0]))
        write_dicom_series(base_hu(), source, extra=PATIENT_TAGS, **kwargs)
        _SERIES_CACHE[key] = source
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for file in sorted(_SERIES_CACHE[key].iterdir()):
        shutil.copyfile(file, folder / file.name)
        paths.append(folder / file.name)
    return paths


def set_raw(path: Path, keyword: str, value: bytes, vr: str | None = None) -> None:
    """Store ``value`` as the element's bytes, exactly, whatever they say."""
    ds = pydicom.dcmread(path)
    tag = tag_for_keyword(keyword)
    ds[tag] = RawDataElement(Tag(tag), vr or dictionary_VR(tag), len(value), value, 0, False, True)
    ds.save_as(path)


def remove(path: Path, keyword: str) -> None:
    ds = pydicom.dcmread(path)
    delattr(ds, keyword)
    ds.save_as(path)


def series_case(id, expect, edit, which="one", **kwargs):
    """A 10-slice series folder with ``edit(path)`` applied to one file (the 4th) or to all."""

    def build(folder):
        target = folder / id
        files = write_series(target)
        for path in files if which == "all" else [sorted(files)[3]]:
            edit(path)
        return target

    if expect == "load":
        kwargs.setdefault("shape", SHAPE)
        kwargs.setdefault("spacing", SPACING)
    CASES.append(Case(id=f"dicom-{id}", kind="dicom", build=build, expect=expect, **kwargs))


def single_case(id, expect, edit, **kwargs):
    """One DICOM file (a slice of the series) with ``edit(path)`` applied."""

    def build(folder):
        files = write_series(folder / f"{id}-series")
        path = folder / f"{id}.dcm"
        shutil.move(sorted(files)[3], path)
        shutil.rmtree(folder / f"{id}-series")
        edit(path)
        return path

    if expect == "load":
        kwargs.setdefault("shape", (1, 16, 20))
        kwargs.setdefault("model", False)
    CASES.append(Case(id=f"dicom-file-{id}", kind="dicom", build=build, expect=expect, **kwargs))


def _raw(keyword, value, vr=None):
    return lambda path: set_raw(path, keyword, value, vr)


def _truncate(count):
    return lambda path: path.write_bytes(path.read_bytes()[:count] if count > 0 else path.read_bytes()[:count])


def _junk(size):
    return lambda path: path.write_bytes(bytes((i * 7919) % 256 for i in range(size)))


def _compressed_syntax(path):
    """Claim RLE compression (a UID as long as the real one) for pixel data stored raw."""
    data = path.read_bytes()
    assert data.count(b"1.2.840.10008.1.2.1\x00") == 1
    path.write_bytes(data.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.5\x00"))


def _bits(value):
    def edit(path):
        ds = pydicom.dcmread(path)
        ds.BitsAllocated = value
        ds.save_as(path)

    return edit


def _no_pixels(path):
    remove(path, "PixelData")


def _bad_charset(path):
    ds = pydicom.dcmread(path)
    ds.SpecificCharacterSet = "ISO_IR 9999"
    ds.SeriesDescription = "Corpus CT"
    ds.save_as(path)


# single files the reader must refuse, naming the file and what is wrong
single_case("valid", "load", lambda p: None, spacing=None, values="slice-3")
single_case("empty", "refuse", lambda p: p.write_bytes(b""), message="empty.dcm: (not a DICOM|damaged)")
single_case("junk", "refuse", _junk(3000), message="junk.dcm: (not a DICOM|damaged)")
single_case("cut-header", "refuse", _truncate(300), message="cut-header.dcm: (not a DICOM|damaged|.*without pixel data)")
single_case("cut-pixels", "refuse", _truncate(-100), message="cut-pixels.dcm: .*(pixel data|damaged)")
single_case("frames-2g", "refuse", _raw("NumberOfFrames", b"2147483647 "), message="frames-2g.dcm: the header describes 2147483647 frame")
single_case("frames-text", "refuse", _raw("NumberOfFrames", b"zz"), message="frames-text.dcm: NumberOfFrames is 'zz'")
single_case("frames-zero", "refuse", _raw("NumberOfFrames", b"0 "), message="frames-zero.dcm: NumberOfFrames is '0'")
single_case("slope-text", "refuse", _raw("RescaleSlope", b"abc "), message="slope-text.dcm: RescaleSlope is 'abc'")
single_case("slope-zero", "refuse", _raw("RescaleSlope", b"0 "), message="slope-zero.dcm: RescaleSlope is '0'")
single_case("slope-nan", "refuse", _raw("RescaleSlope", b"nan "), message="slope-nan.dcm: RescaleSlope is 'nan'")
single_case("intercept-text", "refuse", _raw("RescaleIntercept", b"x1"), message="intercept-text.dcm: RescaleIntercept is 'x1'")
single_case("rows-zero", "refuse", _raw("Rows", b"\x00\x00", "US"), message="rows-zero.dcm: Rows is '0'")
single_case("rows-missing", "refuse", lambda p: remove(p, "Rows"), message="rows-missing.dcm: the Rows tag is missing")
single_case("rows-huge", "refuse", _raw("Rows", b"\xff\xff", "US"), message="rows-huge.dcm: the header describes 1 frame.*65535 x 20")
single_case("colour-claim", "refuse", _raw("SamplesPerPixel", b"\x03\x00", "US"), message="no DICOM image series|colour")
single_case("no-pixels", "refuse", _no_pixels, message="no-pixels.dcm: image object without pixel data")
single_case("jpeg-claim", "refuse", _compressed_syntax, message="jpeg-claim.dcm: pixel data could not be decoded")
single_case("bits-12", "refuse", _bits(12), message="bits-12.dcm: .*(pixel data|BitsAllocated)")
# single files whose damage is in tags that are not needed: they load, with a warning
single_case("window-text", "load", _raw("WindowWidth", b"wide"), spacing=None, values="slice-3",
            warns="WindowWidth 'wide'")
single_case("instance-text", "load", _raw("InstanceNumber", b"1.5e"), spacing=None, values="slice-3",
            warns="InstanceNumber")
single_case("spacing-text", "load", _raw("PixelSpacing", b"a\\b "), spacing=None, values="slice-3",
            warns="PixelSpacing")
single_case("bad-charset", "load", _bad_charset, spacing=None, values="slice-3")
CASES.append(Case("dicom-file-fifo", "dicom", _fifo("pipe.dcm"), "refuse", message="pipe.dcm: not a regular file"))

# series: one damaged file is left out with a warning naming it; bad optional tags fall back
series_case("valid", "load", lambda p: None)
series_case("window-text-all", "load", _raw("WindowWidth", b"wide"), "all", warns="WindowWidth 'wide'")
series_case("window-center-one", "load", _raw("WindowCenter", b"--"), warns="WindowCenter '--'")
series_case("instance-text-all", "load", _raw("InstanceNumber", b"x"), "all", warns="InstanceNumber 'x'")
series_case("spacing-text-all", "load", _raw("PixelSpacing", b"a\\b "), "all", spacing=(2.5, 1.0, 1.0),
            warns="PixelSpacing")
series_case("spacing-zero-all", "load", _raw("PixelSpacing", b"0\\0 "), "all", spacing=(2.5, 1.0, 1.0),
            warns="PixelSpacing '0")
series_case("thickness-text-all", "load", _raw("SliceThickness", b"thin"), "all", warns="SliceThickness 'thin'")
series_case("orientation-zero-all", "load", _raw("ImageOrientationPatient", b"0\\0\\0\\0\\0\\0 "), "all",
            warns="ImageOrientationPatient")
series_case("orientation-zero-one", "load", _raw("ImageOrientationPatient", b"0\\0\\0\\0\\0\\0 "),
            warns="ImageOrientationPatient")
series_case("orientation-parallel-all", "load", _raw("ImageOrientationPatient", b"1\\0\\0\\1\\0\\0 "), "all",
            warns="ImageOrientationPatient")
series_case("position-nan-one", "load", _raw("ImagePositionPatient", b"nan\\0\\0 "), warns="ImagePositionPatient",
            spacing=None)
series_case("slope-text-one", "load", _raw("RescaleSlope", b"abc "), shape=(9, 16, 20), values="without-3",
            spacing=None, warns=r"IM00003.dcm: RescaleSlope is 'abc'")
series_case("slope-text-all", "refuse", _raw("RescaleSlope", b"abc "), "all", message="RescaleSlope is 'abc'")
series_case("frames-2g-one", "load", _raw("NumberOfFrames", b"2147483647 "), shape=(9, 16, 20), values="without-3",
            spacing=None, warns="IM00003.dcm: the header describes 2147483647 frame")
series_case("frames-2-one", "load", _raw("NumberOfFrames", b"2 "), shape=(9, 16, 20), values="without-3",
            spacing=None, warns="IM00003.dcm: the header describes 2 frame")
series_case("pixels-cut-one", "load", _truncate(-100), shape=(9, 16, 20), values="without-3", spacing=None,
            warns=r"left out 1 slice.*IM00003.dcm")
series_case("jpeg-claim-one", "load", _compressed_syntax, shape=(9, 16, 20), values="without-3", spacing=None,
            warns=r"left out 1 slice.*IM00003.dcm: pixel data could not be decoded")
series_case("header-cut-one", "load", _truncate(300), shape=(9, 16, 20), values="without-3", spacing=None,
            warns="unreadable files: IM00003.dcm")
series_case("rows-zero-one", "load", _raw("Rows", b"\x00\x00", "US"), shape=(9, 16, 20), values="without-3",
            spacing=None, warns="IM00003.dcm: Rows is '0'")
series_case("pixels-cut-all", "refuse", _truncate(-100), "all", message="no slice could be decoded|pixel data")
series_case("junk-all", "refuse", _junk(2000), "all", message="no DICOM image series found")


def _multiframe(frames_claim=None):
    """The base volume as one multi-frame object (no per-frame geometry)."""

    def build(folder):
        files = sorted(write_series(folder / "mf-src"))
        ds = pydicom.dcmread(files[0])
        stack = np.stack([pydicom.dcmread(f).pixel_array for f in files])
        ds.NumberOfFrames = str(frames_claim or len(files))
        ds.PixelData = stack.tobytes()
        for keyword in ("ImagePositionPatient", "SliceThickness"):
            delattr(ds, keyword)
        ds.SpacingBetweenSlices = "2.5"
        path = folder / f"multiframe-{frames_claim or 'ok'}.dcm"
        ds.save_as(path)
        shutil.rmtree(folder / "mf-src")
        return path

    return build


CASES += [
    Case("dicom-multiframe", "dicom", _multiframe(), "load", shape=SHAPE, spacing=SPACING,
         warns="no slice positions"),
    Case("dicom-multiframe-claims-more", "dicom", _multiframe(11), "refuse",
         message="multiframe-11.dcm: the header describes 11 frame"),
    Case("dicom-multiframe-claims-2g", "dicom", _multiframe(2**31 - 1), "refuse",
         message=f"multiframe-{2**31 - 1}.dcm: the header describes {2**31 - 1} frame"),
]


# -- folders --------------------------------------------------------------------------------------


def folder_case(id, expect, extras, **kwargs):
    """A folder holding the valid series (unless ``extras`` says otherwise) and odd entries."""

    def build(folder):
        target = folder / id
        target.mkdir()
        extras(target)
        return target

    if expect == "load":
        kwargs.setdefault("shape", SHAPE)
        kwargs.setdefault("spacing", SPACING)
    CASES.append(Case(id=f"folder-{id}", kind="folder", build=build, expect=expect, **kwargs))


def _with_series(*more):
    def extras(target):
        write_series(target / "series")
        for extra in more:
            extra(target)

    return extras


def _fifo_in(name):
    return lambda target: os.mkfifo(target / name)


def _link_in(name, to):
    return lambda target: os.symlink(to, target / name)


def _socket_in(name):
    def extras(target):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(target / name))
        finally:
            sock.close()

    return extras


def _text_in(name, text="not an image"):
    return lambda target: (target / name).write_text(text)


def _nifti_in(name, raw=None):
    return lambda target: write_nifti(target / name, raw() if raw else nifti_bytes())


folder_case("empty", "refuse", lambda t: None, message="no NIfTI or DICOM images found")
folder_case("only-text", "refuse", _text_in("notes.txt"), message="no NIfTI or DICOM images found")
folder_case("only-fifo", "refuse", _fifo_in("IM0001.dcm"), message="no (NIfTI or DICOM images|DICOM image series)")
folder_case("fifo-dcm", "load", _with_series(_fifo_in("IM9999.dcm")), warns="not regular files")
folder_case("fifo-no-suffix", "load", _with_series(_fifo_in("PIPE")), warns="not regular files")
folder_case("fifo-nii", "load", _with_series(_fifo_in("pipe.nii")), warns="not regular files")
folder_case("dev-zero", "load", _with_series(_link_in("zero.dcm", "/dev/zero")), warns="not regular files")
folder_case("dev-null", "load", _with_series(_link_in("null.dcm", "/dev/null")), warns="not regular files")
folder_case("socket", "load", _with_series(_socket_in("sock")), warns="not regular files")
folder_case("broken-link", "load", _with_series(_link_in("gone.dcm", "/nonexistent/gone.dcm")),
            warns="not regular files")
folder_case("link-loop", "load", _with_series(lambda t: os.symlink(t / "loop", t / "loop")), warns="not regular files")
folder_case("junk-files", "load", _with_series(
    _text_in("README.txt"),
    lambda t: (t / "blob.bin").write_bytes(bytes(range(256)) * 4),
    lambda t: (t / "x.dcm").write_bytes(b"nope"),
), warns="unreadable files: x.dcm")
folder_case("nifti-and-bad-nifti", "load", lambda t: (_nifti_in("good.nii")(t), _nifti_in("bad.nii", lambda: b"")(t)),
            warns="skipped: bad.nii: not a readable NIfTI")
folder_case("nifti-and-bad-dicom", "load", lambda t: (_nifti_in("good.nii.gz")(t), (t / "bad.dcm").write_bytes(b"")),
            warns="skipped: the folder: no DICOM image series found")
folder_case("nested-deep", "load", lambda t: write_series(t / "a" / "b" / "c" / "d" / "e"))


# -- zip archives ---------------------------------------------------------------------------------


def _zip_of_series(path: Path, method=zipfile.ZIP_DEFLATED, prefix="series/") -> Path:
    folder = path.parent / (path.stem + "-src")
    files = write_series(folder)
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        for file in sorted(files):
            archive.write(file, prefix + file.name)
    shutil.rmtree(folder)
    return path


def _patch_zip(data: bytearray, members: Callable[[int], bool], local: dict, central: dict) -> bytearray:
    """Overwrite fields of local and central headers: {offset: (struct format, value)}."""
    for signature, fields in ((b"PK\x03\x04", local), (b"PK\x01\x02", central)):
        index, position = 0, data.find(signature)
        while position >= 0:
            if members(index):
                for offset, (fmt, value) in fields.items():
                    struct.pack_into(fmt, data, position + offset, value)
            index += 1
            position = data.find(signature, position + 4)
    return data


def zip_case(id, expect, build_zip, **kwargs):
    def build(folder):
        return build_zip(folder / f"{id}.zip")

    if expect == "load":
        kwargs.setdefault("shape", SHAPE)
        kwargs.setdefault("spacing", SPACING)
    CASES.append(Case(id=f"zip-{id}", kind="zip", build=build, expect=expect, **kwargs))


def _mutated_zip(mutate, **zip_kwargs):
    def build(path):
        _zip_of_series(path, **zip_kwargs)
        path.write_bytes(bytes(mutate(bytearray(path.read_bytes()))))
        return path

    return build


def _encrypted(which):
    # general purpose flag bit 0 (encrypted): local header offset 6, central header offset 8
    return lambda data: _patch_zip(data, which, {6: ("<H", 1)}, {8: ("<H", 1)})


def _member_data_offset(data: bytes, index: int) -> int:
    position = -1
    for _ in range(index + 1):
        position = data.find(b"PK\x03\x04", position + 1)
    name_length, extra_length = struct.unpack_from("<HH", data, position + 26)
    return position + 30 + name_length + extra_length


def _corrupt_member(index):
    def mutate(data):
        start = _member_data_offset(data, index)
        for k in range(40, 60):
            data[start + k] ^= 0x5A
        return data

    return mutate


def _bomb(path: Path, size: int) -> Path:
    """A zip whose one DICOM-named member inflates ``size`` bytes of zeros (a real bomb)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    with open(path.with_suffix(".deflate"), "wb") as raw:
        for _ in range(size >> 20):
            raw.write(compressor.compress(chunk))
        raw.write(compressor.flush())
    compressed = path.with_suffix(".deflate").read_bytes()
    path.with_suffix(".deflate").unlink()
    crc = 0
    for _ in range(size >> 20):
        crc = zlib.crc32(chunk, crc)
    name = b"bomb.dcm"
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(compressed), size, len(name), 0)
    central = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(compressed), size,
                          len(name), 0, 0, 0, 0, 0, 0)
    end_offset = len(local) + len(name) + len(compressed)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central) + len(name), end_offset, 0)
    path.write_bytes(local + name + compressed + central + name + end)
    return path


def _declares(size):
    """A 1-member zip of a real slice whose headers declare it inflates to ``size`` bytes."""

    def build(path):
        _zip_of_series(path)
        with zipfile.ZipFile(path) as archive:
            first = archive.infolist()[0]
        data = bytearray(path.read_bytes())
        keep = data[: data.find(b"PK\x03\x04", 4)]  # the first member's local header and data
        central_at = data.find(b"PK\x01\x02")
        central = data[central_at : data.find(b"PK\x01\x02", central_at + 4)]
        struct.pack_into("<I", keep, 22, size)
        struct.pack_into("<I", central, 24, size)
        struct.pack_into("<I", central, 42, 0)
        end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(keep), 0)
        path.write_bytes(bytes(keep + central + end))
        assert first.filename
        return path

    return build


zip_case("valid", "load", _zip_of_series)
zip_case("stored", "load", lambda p: _zip_of_series(p, method=zipfile.ZIP_STORED))
zip_case("bzip2", "load", lambda p: _zip_of_series(p, method=zipfile.ZIP_BZIP2))
zip_case("lzma", "load", lambda p: _zip_of_series(p, method=zipfile.ZIP_LZMA))
zip_case("traversal-names", "load", lambda p: _zip_of_series(p, prefix="../../../etc/"))
zip_case("encrypted", "refuse", _mutated_zip(_encrypted(lambda i: True)), message="is encrypted")
zip_case("encrypted-one", "load", _mutated_zip(_encrypted(lambda i: i == 3)), shape=(9, 16, 20), values="without-3",
         spacing=None, warns="skipped 1 encrypted members")
zip_case("cut-half", "refuse", _mutated_zip(lambda d: d[: len(d) // 2]), message="damaged or truncated zip")
zip_case("cut-end", "refuse", _mutated_zip(lambda d: d[:-10]), message="damaged or truncated zip|damaged zip")
zip_case("corrupt-member", "load", _mutated_zip(_corrupt_member(3)), shape=(9, 16, 20), values="without-3",
         spacing=None, warns="IM00003.dcm: damaged zip member")
zip_case("bomb-128m", "refuse", lambda p: _bomb(p, 128 << 20), message="likely zip bomb")
zip_case("declares-1g", "refuse", _declares(1 << 30), message="likely zip bomb")
zip_case("declares-4g", "refuse", _declares(0xFFFFFFF0), message="likely zip bomb|inflate to more than")
zip_case("empty", "refuse", lambda p: zipfile.ZipFile(p, "w").close() or p, message="no DICOM image series")
def _text_zip(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes/a.txt", "hello")
    return path


zip_case("only-text", "refuse", _text_zip, message="no DICOM image series")
zip_case("garbage", "refuse", lambda p: _written(p, b"PK" + bytes(500)), message="damaged or truncated zip")
CASES.append(Case("zip-fifo", "zip", _fifo("pipe.zip"), "refuse", message="pipe.zip: not a regular file"))


def _zip_in_zip(path):
    inner = _zip_of_series(path.with_name("inner.zip"))
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(inner, "inner.zip")
    inner.unlink()
    return path


zip_case("nested-zip", "refuse", _zip_in_zip, message="no DICOM image series")


# -- expected voxels ------------------------------------------------------------------------------


def expected_values(case: Case) -> np.ndarray | None:
    base = base_hu()
    return {
        "exact": base,
        "same": base,
        "scaled": base.astype(np.float32) * 2 - 10,
        "first-slice": base[:1],
        "slice-3": base[3:4],
        "without-3": np.delete(base, 3, axis=0),
        "nan-slice": np.where(np.arange(10)[:, None, None] == 4, np.nan, base).astype(np.float32),
    }.get(case.values)


def build_corpus(root: Path) -> dict[str, Path]:
    """Write every case under ``root``; {case id: the path to open}."""
    paths = {}
    _CACHE_ROOT[0] = root / "_cache"
    _CACHE_ROOT[0].mkdir(parents=True, exist_ok=True)
    for item in CASES:
        folder = root / item.id
        folder.mkdir(parents=True)
        paths[item.id] = item.build(folder)
    return paths


def counts() -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for item in CASES:
        table.setdefault(item.kind, {"refuse": 0, "load": 0})[item.expect] += 1
    return table
