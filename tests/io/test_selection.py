"""`select_series`, the one rule for "which series", and `read_volume` decoding only the series it picks."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest

from napari_med3dvlm.io import VolumeReadError, list_series, read_volume, select_series, short_hash
from napari_med3dvlm.io.dicom import SeriesInfo, reader

UID = "1.2.826.0.1.3680043.8.498.42"
SERIES = [
    SeriesInfo("aaaa111111", "Head CT axial", "CT", 10, (10, 8, 8)),
    SeriesInfo(short_hash(UID), "T1 axial", "MR", 12, (12, 8, 8)),
]


@pytest.mark.parametrize(
    "series, index",
    [(0, 0), (1, 1), (-1, 1), (np.int64(1), 1), (SERIES[1], 1), ("aaaa111111", 0), ("aaaa", 0),
     ("T1 axial", 1), (UID, 1)],
)
def test_every_accepted_way_of_naming_a_series(series, index):
    assert select_series(SERIES, series, "the folder") == index
    assert select_series(SERIES[:1], None, "the folder") == 0


@pytest.mark.parametrize(
    "series, message",
    [(None, "the folder holds 2 series; choose one by index, hash or description: 0: Head CT axial [aaaa111111]"),
     (2, "the folder: series index 2 is out of range (2 series: 0: Head CT axial"),
     ("PD axial", "the folder: 'PD axial' matches no series: 0: Head CT axial"),
     ("1.2.3.4", "the folder has no series with the given series UID (2 series: 0: Head CT axial")],
)
def test_one_message_listing_the_series_without_identifiers(series, message):
    with pytest.raises(VolumeReadError) as error:
        select_series(SERIES, series, "the folder")
    assert str(error.value).startswith(message)
    assert UID not in str(error.value) and "1.2.3.4" not in str(error.value)


def test_a_folder_of_nifti_and_dicom_decodes_only_the_chosen_series(tmp_path, cranium_dicom, monkeypatch):
    folder = tmp_path / "mixed"
    (folder / "dicom").mkdir(parents=True)
    for file in cranium_dicom.iterdir():
        (folder / "dicom" / file.name).write_bytes(file.read_bytes())
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 10), np.int16), np.eye(4)), str(folder / "small.nii.gz"))
    decoded = []
    original = reader._pixels
    monkeypatch.setattr(reader, "_pixels", lambda slices, shape: decoded.append(len(slices)) or original(slices, shape))

    infos = list_series(folder)
    assert len(infos) == 2 and infos[1].description == "Head CT axial" and decoded == []
    assert read_volume(folder, 0).shape == (10, 9, 8) and decoded == []  # the NIfTI
    uid = pydicom.dcmread(sorted((folder / "dicom").iterdir())[0], stop_before_pixels=True).SeriesInstanceUID
    for series in (1, infos[1], "Head CT axial", uid):
        decoded.clear()
        assert read_volume(folder, series).description == "Head CT axial"
        assert decoded == [infos[1].n_slices]
