"""``report FOLDER --series N`` decodes only the chosen series: the series are told apart from their
headers (the io readers' one `select_series` rule) before any pixel is decoded."""

from __future__ import annotations

import json

import pydicom
import pytest

from napari_med3dvlm.cli import main
from napari_med3dvlm.io.dicom import reader
from napari_med3dvlm.io.dicom_write import write_dicom_series


@pytest.fixture
def study(tmp_path, ct_volume):
    """A folder with two CT series of different sizes, in sub-folders a/ (series 0) and b/ (series 1)."""
    root = tmp_path / "study"
    write_dicom_series(ct_volume, root / "a", spacing=(2.5, 0.8, 0.8), description="Abdomen CT")
    write_dicom_series(ct_volume[4:20, 4:44, 6:42], root / "b", spacing=(2.5, 0.8, 0.8), description="Abdomen CT crop")
    return root


@pytest.fixture
def decoded(monkeypatch):
    """The number of series whose pixels were decoded (`_pixels` stacks one series)."""
    calls = []
    original = reader._pixels

    def counting(slices, shape):
        calls.append(len(slices))
        return original(slices, shape)

    monkeypatch.setattr(reader, "_pixels", counting)
    return calls


def _volume_shape(out, stem="report-01"):
    return tuple(json.loads((out / f"{stem}.json").read_text())["volume"]["shape"])


def test_report_series_decodes_only_that_series(engine, study, decoded, tmp_path, capsys):
    out = tmp_path / "one"
    assert main(["report", str(study), "--series", "1", "--out", str(out), "--max-new-tokens", "4"]) == 0
    assert len(decoded) == 1 and decoded == [16]
    assert _volume_shape(out) == (16, 40, 36)
    assert sorted(p.name for p in out.iterdir()) == ["report-01.json", "report-01.md"]

    decoded.clear()  # without --series every series is read (and reported)
    every = tmp_path / "every"
    assert main(["report", str(study), "--out", str(every), "--max-new-tokens", "4"]) == 0
    assert sorted(decoded) == [16, 24]
    assert _volume_shape(every) == (24, 48, 48)


def test_ask_series_by_uid_decodes_only_that_series(engine, study, decoded, capsys):
    uid = pydicom.dcmread(sorted((study / "b").iterdir())[0], stop_before_pixels=True).SeriesInstanceUID
    assert main(["ask", str(study), "Which organ?", "--series", uid, "--max-new-tokens", "4"]) == 0
    assert decoded == [16]
    assert "series found" not in capsys.readouterr().err


def test_a_series_that_is_not_there_is_one_line_listing_the_series(engine, study, decoded, tmp_path, capsys):
    assert main(["report", str(study), "--series", "5", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "series index 5 is out of range (2 series: 0: Abdomen CT [" in err and "1: Abdomen CT crop [" in err
    assert "study" not in err  # the folder is "the folder": its name may name the patient
    assert decoded == []

    missing = "1.2.826.0.1.3680043.8.498.1"
    assert main(["report", str(study), "--series", missing, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "the folder has no series with the given series UID (2 series: 0: Abdomen CT [" in err and missing not in err
    assert decoded == []
