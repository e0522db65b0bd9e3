"""``--series`` with ``--dicomweb``: the study's image series are picked by the readers' one rule
(`io.select_series`), and a series that is not there is one line listing them without a UID."""

from __future__ import annotations

from napari_med3dvlm.cli import main
from napari_med3dvlm.io.dicomweb import DicomWebServer


def test_a_series_index_beyond_the_study_lists_its_series(orthanc, head_study, engine, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["report", "--out", str(out), "--dicomweb", orthanc.dicomweb, "--study", head_study.study_uid,
                 "--series", "3"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err
    assert "the study: series index 3 is out of range (1 series: 0: Head CT axial [" in errors[0], errors
    assert head_study.study_uid not in err and head_study.series_uid not in err
    assert not out.exists() or not any(out.iterdir())


def test_the_series_uid_picks_the_same_series_as_its_index(orthanc, head_study):
    server = DicomWebServer(orthanc.dicomweb)
    (by_uid,) = server.image_series(head_study.study_uid, head_study.series_uid)
    assert by_uid == server.image_series(head_study.study_uid)[0]
    assert by_uid.series_uid == head_study.series_uid and by_uid.description == "Head CT axial"
