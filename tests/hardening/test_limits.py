"""The memory limits, on a machine made to look small: refused before anything is allocated."""

from __future__ import annotations

import zipfile

import pytest
from corpus import nifti_bytes, write_nifti, write_series

from napari_med3dvlm.io import VolumeReadError, read_volume
from napari_med3dvlm.io import _util
from napari_med3dvlm.io.dicom import sources as dicom


@pytest.fixture
def small_machine(monkeypatch):
    """4 kB of free memory: less than any corpus volume needs (6.4 kB)."""
    monkeypatch.setattr(_util, "available_memory", lambda: 4 << 10)
    monkeypatch.setattr(dicom, "available_memory", lambda: 4 << 10)


def test_zip_members_beyond_the_free_memory_are_refused(tmp_path, small_machine):
    files = write_series(tmp_path / "series")
    path = tmp_path / "series.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in files:
            archive.write(file, file.name)
    with pytest.raises(VolumeReadError, match="the zip archive: its DICOM members inflate to more than"):
        read_volume(path)


def test_a_dicom_series_beyond_the_free_memory_is_refused(tmp_path, small_machine):
    write_series(tmp_path / "series")
    with pytest.raises(VolumeReadError, match=r"the series \(10 slices of 16 x 20\) needs .* of memory"):
        read_volume(tmp_path / "series")


def test_a_compressed_nifti_beyond_the_free_memory_is_refused(tmp_path, small_machine):
    path = write_nifti(tmp_path / "scan.nii.gz", nifti_bytes())
    with pytest.raises(VolumeReadError, match="scan.nii.gz: the image needs .* of memory"):
        read_volume(path)


def test_a_normal_machine_reads_them(tmp_path):
    write_series(tmp_path / "series")
    assert read_volume(tmp_path / "series").shape == (10, 16, 20)
