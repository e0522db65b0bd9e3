"""Real volumes for the io tests, converted once per session into the formats we read."""

from __future__ import annotations

import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from napari_med3dvlm.io.dicom_write import write_dicom_series

# Known facts about the test volumes live next to the tests (importlib import mode adds no test
# folder to sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from io_assets import CRANIUM, CRANIUM_SHAPE, CRANIUM_SPACING, PATIENT_TAGS  # noqa: E402


@pytest.fixture(scope="session")
def cranium_hu() -> np.ndarray:
    """The InVesalius head CT in HU, (z, y, x) with z inferior->superior as InVesalius stores it."""
    with tarfile.open(CRANIUM, "r:gz") as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("matrix.dat"))
        raw = archive.extractfile(member).read()
    return np.frombuffer(raw, dtype="<i2").reshape(CRANIUM_SHAPE).copy()


@pytest.fixture(scope="session")
def cranium_dicom(tmp_path_factory, cranium_hu) -> Path:
    """The head CT as a shuffled axial DICOM series with identifiers planted in every file."""
    folder = tmp_path_factory.mktemp("cranium_dicom")
    write_dicom_series(
        cranium_hu,
        folder,
        spacing=CRANIUM_SPACING,
        first_position=(-122.5, -130.0, -80.0),
        description="Head CT axial",
        intercept=-1024,
        window=(40, 80),
        shuffle=True,
        seed=3,
        extra=PATIENT_TAGS,
    )
    return folder


@pytest.fixture(scope="session")
def mr_dicom(tmp_path_factory, cranium_hu) -> Path:
    """A small second series (MR-like, no rescale) to pair with the CT in one folder."""
    folder = tmp_path_factory.mktemp("mr_dicom")
    values = np.clip(cranium_hu[::4, ::4, ::4].astype(np.int32) + 1024, 0, 4000)
    write_dicom_series(
        values,
        folder,
        spacing=(6.0, 3.83, 3.83),
        modality="MR",
        description="T1 axial",
        intercept=0,
        extra=PATIENT_TAGS,
    )
    return folder


@pytest.fixture(scope="session")
def two_series_dir(tmp_path_factory, cranium_dicom, mr_dicom) -> Path:
    """A study folder: two series in nested sub-folders plus a text file to ignore."""
    root = tmp_path_factory.mktemp("study")
    for name, source in (("ct", cranium_dicom), ("mr", mr_dicom)):
        target = root / "exam" / name
        target.mkdir(parents=True)
        for file in source.iterdir():
            (target / file.name).write_bytes(file.read_bytes())
    (root / "README.txt").write_text("not an image")
    return root


@pytest.fixture(scope="session")
def cranium_zip(tmp_path_factory, cranium_dicom) -> Path:
    path = tmp_path_factory.mktemp("zipped") / "head_ct.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for file in sorted(cranium_dicom.iterdir()):
            archive.write(file, f"series/{file.name}")
    return path


@pytest.fixture(scope="session")
def assert_no_identifiers():
    """Checks that nothing identifying (planted tags, UIDs in clear) appears in an object's repr."""

    def check(obj, uids=()):
        text = repr(obj)
        for value in list(PATIENT_TAGS.values()) + [str(u) for u in uids]:
            assert value not in text, f"identifier {value!r} leaked"

    return check
