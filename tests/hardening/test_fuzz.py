"""Bounded fuzzing of the readers: valid small NIfTI (.nii, .nii.gz) and DICOM files with bytes of
their headers or data overwritten, or cut short. Whatever the bytes, reading either works or raises
our `VolumeReadError`; any other exception, or a read over its deadline, fails the test.

Deterministic (derandomized, no example database), so CI sees the same examples every run:
120 + 80 + 80 + 120 = 400 examples, each under a 5 s deadline, all four under pytest-timeout's 600 s.
"""

from __future__ import annotations

import gzip
import tempfile
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
from corpus import PATIENT_TAGS, nifti_bytes, write_series
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_med3dvlm.io import VolumeReadError, list_series, read_volume

# slow: hypothesis examples through the readers
pytestmark = pytest.mark.slow

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

VALID_NIFTI = nifti_bytes()
HEADER = 352  # NIfTI-1 header and the extension flag


def _valid_dicom() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        return sorted(write_series(Path(folder) / "series"))[3].read_bytes()


VALID_DICOM = _valid_dicom()
DICOM_PIXELS = VALID_DICOM.rfind(b"\xe0\x7f\x10\x00")  # the Pixel Data element's tag


def mutations(size: int, start: int = 0, stop: int | None = None):
    """Up to 8 single bytes overwritten in [start, stop), and maybe a cut."""
    stop = size if stop is None else stop
    edits = st.lists(st.tuples(st.integers(start, stop - 1), st.integers(0, 255)), min_size=1, max_size=8)
    cut = st.one_of(st.none(), st.integers(0, size))
    return st.tuples(edits, cut)


def mutate(data: bytes, mutation) -> bytes:
    edits, cut = mutation
    out = bytearray(data)
    for offset, value in edits:
        out[offset] = value
    return bytes(out[:cut] if cut is not None else out)


def read_or_refuse(path: Path) -> None:
    """The contract under test: a volume, or our error; nothing else, and no identifier in either."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for reader in (list_series, read_volume):
            try:
                reader(path)
            except VolumeReadError as err:
                assert str(err).strip()
                caught.append(warnings.WarningMessage(str(err), UserWarning, "", 0))
    for value in PATIENT_TAGS.values():
        assert not any(value in str(w.message) for w in caught)


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


@pytest.mark.timeout(600)
@settings(FUZZ, max_examples=120)
@given(mutation=mutations(len(VALID_NIFTI), 0, HEADER))
def test_nifti_header_bytes(scratch, mutation):
    path = scratch / "fuzz.nii"
    path.write_bytes(mutate(VALID_NIFTI, mutation))
    read_or_refuse(path)


@pytest.mark.timeout(600)
@settings(FUZZ, max_examples=80)
@given(mutation=mutations(len(VALID_NIFTI), 0, HEADER), compress=st.booleans())
def test_nifti_gz_header_and_data_bytes(scratch, mutation, compress):
    """A damaged header inside a sound gzip stream, or a sound file inside a damaged one."""
    path = scratch / "fuzz.nii.gz"
    if compress:
        path.write_bytes(gzip.compress(mutate(VALID_NIFTI, mutation), compresslevel=1))
    else:
        packed = gzip.compress(VALID_NIFTI, compresslevel=1)
        edits, cut = mutation
        edits = [(offset * len(packed) // HEADER, value) for offset, value in edits]
        path.write_bytes(mutate(packed, (edits, None if cut is None else cut * len(packed) // len(VALID_NIFTI))))
    read_or_refuse(path)


@pytest.mark.timeout(600)
@settings(FUZZ, max_examples=80)
@given(mutation=mutations(len(VALID_NIFTI), HEADER))
def test_nifti_data_bytes(scratch, mutation):
    path = scratch / "fuzz-data.nii"
    path.write_bytes(mutate(VALID_NIFTI, mutation))
    read_or_refuse(path)


@pytest.mark.timeout(600)
@settings(FUZZ, max_examples=120)
@given(mutation=mutations(len(VALID_DICOM), 128, DICOM_PIXELS + 12), where=st.sampled_from(["file", "folder"]))
def test_dicom_header_bytes(scratch, mutation, where):
    """One mutated file, alone or as one slice of a folder (where the rest must still load)."""
    data = mutate(VALID_DICOM, mutation)
    if where == "file":
        path = scratch / "fuzz.dcm"
        path.write_bytes(data)
        read_or_refuse(path)
        return
    folder = scratch / "series"
    if not folder.exists():
        write_series(folder)
    (folder / "IM00003.dcm").write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            volume = read_volume(folder)
        except VolumeReadError as err:  # only when the mutation made the file a second series
            assert "series" in str(err)
            return
    assert volume.shape[0] in (9, 10) and volume.shape[1:] == (16, 20)
