"""What goes wrong with a PACS, through ``napari-med3dvlm report --dicomweb``: each fault is one clear
line on stderr, exit code 2, no traceback, and no report, SR or partial file written for it."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from napari_med3dvlm.cli import main
from napari_med3dvlm.inference.dicom_sr import build_report_sr, write_sr
from napari_med3dvlm.io import read_volume
from napari_med3dvlm.io.dicom_write import write_dicom_series
from napari_med3dvlm.io.dicomweb import DicomWebError, DicomWebServer

from io_assets import PATIENT_TAGS
from pacs_assets import USER, free_port


def run_report(capsys, tmp_path, *args):
    """(exit code, stderr, files written) of ``report --out <fresh folder> ARGS``."""
    out = tmp_path / "out"
    code = main(["report", "--out", str(out), *args])
    captured = capsys.readouterr()
    written = sorted(p.name for p in out.rglob("*")) if out.exists() else []
    return code, captured.err, written


def assert_fault(code, err, written, *expected):
    assert code == 2
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    for text in expected:
        assert text in errors[0], errors[0]
    assert written == []
    assert not any(value in err for value in PATIENT_TAGS.values())


def _upload_series(orthanc, folder, values, *, damage=None, drop=None, description="Damaged CT"):
    """Write a series (identifiers planted), optionally damage or drop some slices, upload it;
    returns (study UID, series UID, files on disk)."""
    files = write_dicom_series(values, folder, spacing=(2.0, 1.0, 1.0), description=description,
                               extra=dict(PATIENT_TAGS, StudyDescription="faults"))
    kept = []
    for index, file in enumerate(files):
        ds = pydicom.dcmread(file)
        if drop and ds.InstanceNumber in drop:
            continue
        if damage and ds.InstanceNumber in damage:  # pixel data cut to half: the header promises more
            ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
            ds.save_as(file, enforce_file_format=True)
        kept.append(file)
    orthanc.upload(kept)
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, kept


@pytest.fixture
def small_values():
    z, y, x = np.mgrid[:8, :32, :32]
    return (np.where((y - 16) ** 2 + (x - 16) ** 2 < 100, 40, -1000) + 3 * z).astype(np.int16)


def test_unreachable_server(tmp_path, capsys, head_study):
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    assert_fault(*run_report(capsys, tmp_path, "--dicomweb", url, "--study", head_study.study_uid),
                 "cannot reach the DICOMweb server", "check the address")


def test_missing_credentials_401(tmp_path, capsys, orthanc_auth, head_study, config_dir, monkeypatch):
    for name in ("USER", "PASSWORD", "TOKEN"):
        monkeypatch.delenv(f"NAPARI_MED3DVLM_DICOMWEB_{name}", raising=False)
    assert_fault(*run_report(capsys, tmp_path, "--dicomweb", orthanc_auth.dicomweb, "--study", head_study.study_uid),
                 "HTTP 401", "give a user and password or a token")


def test_wrong_password_401_never_printed(tmp_path, capsys, orthanc_auth, head_study, config_dir):
    code, err, written = run_report(
        capsys, tmp_path, "--dicomweb", orthanc_auth.dicomweb, "--study", head_study.study_uid,
        "--dicomweb-user", USER, "--dicomweb-password", "s3cret-wrong",
    )
    assert_fault(code, err, written, "HTTP 401")
    assert "s3cret-wrong" not in err


def test_forbidden_403(tmp_path, capsys, status_server, head_study):
    url, _ = status_server
    assert_fault(*run_report(capsys, tmp_path, "--dicomweb", url, "--study", head_study.study_uid,
                             "--dicomweb-token", "tok-123"), "HTTP 403", "forbidden")


def test_stalling_server_times_out(tmp_path, capsys, stalling_server, head_study):
    assert_fault(*run_report(capsys, tmp_path, "--dicomweb", stalling_server, "--study", head_study.study_uid,
                             "--dicomweb-timeout", "1"), "did not answer within 1 s")


def test_bad_uid_format(tmp_path, capsys, orthanc):
    assert_fault(*run_report(capsys, tmp_path, "--dicomweb", orthanc.dicomweb, "--study", "1.2.abc.3"),
                 "'1.2.abc.3' is not a DICOM UID")


def test_not_a_dicomweb_address(tmp_path, capsys, head_study):
    assert_fault(*run_report(capsys, tmp_path, "--dicomweb", "ftp://pacs/dicom-web", "--study", head_study.study_uid),
                 "is not a DICOMweb address")


def test_unknown_study(tmp_path, capsys, orthanc):
    assert_fault(*run_report(capsys, tmp_path, "--dicomweb", orthanc.dicomweb, "--study", "1.2.3.4.5.6.7"),
                 "study was not found")


def test_study_with_no_image_series(tmp_path, capsys, orthanc, small_values):
    files = write_dicom_series(small_values, tmp_path / "images", description="never uploaded",
                               extra=dict(PATIENT_TAGS, StudyDescription="only a report"))
    source = read_volume(tmp_path / "images").dicom
    sr = build_report_sr(source, "No acute findings.", model_id="test")
    orthanc.upload([write_sr(sr, tmp_path / "sr.dcm")])  # the study holds only this SR
    assert_fault(*run_report(capsys, tmp_path, "--dicomweb", orthanc.dicomweb, "--study", source.study_uid),
                 "holds no image series", "SR")
    assert files


def test_study_above_the_size_limit(tmp_path, capsys, orthanc, head_study):
    assert_fault(*run_report(capsys, tmp_path, "--dicomweb", orthanc.dicomweb, "--study", head_study.study_uid,
                             "--max-download-gb", "0.0005"),
                 "24 instances, 768.0 KiB of pixels, more than the limit of 524.3 KiB", "--max-download-gb")


def test_stow_rejected_by_the_server(engine, tiny_model_dir, tmp_path, capsys, orthanc, read_only_study):
    code, err, written = run_report(capsys, tmp_path, "--dicomweb", orthanc.dicomweb, "--study",
                                    read_only_study.study_uid, "--stow", "--model", str(tiny_model_dir))
    assert code == 2 and "Traceback" not in err
    assert "acknowledged the report but does not list it" in err and "it was not stored" in err
    # The local outputs are whole files (no partial .part left behind); the server got nothing.
    assert written == ["report-01.dcm", "report-01.json", "report-01.md"]
    series = orthanc.get(f"/dicom-web/studies/{read_only_study.study_uid}/series")
    assert {item["00080060"]["Value"][0] for item in series} == {"CT"}


def test_stow_and_study_need_a_dicomweb_server(tmp_path, capsys, head_study):
    assert_fault(*run_report(capsys, tmp_path, str(head_study.folder), "--stow"), "--stow stores the SR")
    assert_fault(*run_report(capsys, tmp_path, "--study", head_study.study_uid), "--study needs --dicomweb")
    assert_fault(*run_report(capsys, tmp_path, "--dicomweb", "http://127.0.0.1:9/dicom-web"), "--dicomweb needs --study")


def test_sr_of_a_non_dicom_source(engine, tiny_model_dir, tmp_path, capsys):
    import nibabel as nib

    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 8), np.int16), np.eye(4)), str(path))
    code = main(["report", str(path), "--out", str(tmp_path / "out"), "--sr", "--model", str(tiny_model_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "a DICOM SR needs a DICOM source" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "report-01.dcm").exists()


def test_damaged_instances_are_left_out_like_damaged_files(tmp_path, orthanc, small_values):
    study, series, files = _upload_series(orthanc, tmp_path / "damaged", small_values, damage={3})
    server = DicomWebServer(orthanc.dicomweb)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable files: instance 3: .*cut short"):
        remote = server.read_series(study, series)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable files: IM\d+\.dcm: .*cut short"):
        local = read_volume(tmp_path / "damaged")
    assert remote.data.shape[0] == 7 and np.array_equal(remote.data, local.data)


def test_every_instance_damaged(tmp_path, capsys, orthanc, small_values):
    study, series, _ = _upload_series(orthanc, tmp_path / "all_damaged", small_values, damage=set(range(1, 9)))
    assert_fault(*run_report(capsys, tmp_path, "--dicomweb", orthanc.dicomweb, "--study", study),
                 "no DICOM image series found")


def test_incomplete_series_warns_as_the_file_reader_does(tmp_path, orthanc, small_values):
    study, series, _ = _upload_series(orthanc, tmp_path / "gap", small_values, drop={4, 5})
    with pytest.warns(UserWarning, match="slice spacing varies from 2.000 to 6.000 mm"):
        volume = DicomWebServer(orthanc.dicomweb).read_series(study, series)
    assert volume.data.shape[0] == 6


def test_unknown_series_of_a_known_study(orthanc, head_study):
    server = DicomWebServer(orthanc.dicomweb)
    with pytest.raises(DicomWebError, match="no series with the given series UID"):
        server.read_study(head_study.study_uid, "1.2.3.999")


def test_stow_refused_with_an_http_status(status_server, tmp_path, small_values):
    url, handler = status_server
    handler.status = 409
    write_dicom_series(small_values, tmp_path / "images", extra=dict(PATIENT_TAGS))
    sr = build_report_sr(read_volume(tmp_path / "images").dicom, "No acute findings.", model_id="test")
    with pytest.raises(DicomWebError, match="answered HTTP 409") as caught:
        DicomWebServer(url).store(sr)
    assert not any(value in str(caught.value) for value in PATIENT_TAGS.values())


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_connection_cut_in_the_middle_of_a_wado_transfer(tmp_path, capsys, cutting_proxy, head_study, framing):
    url, handler = cutting_proxy
    handler.framing = framing
    assert_fault(*run_report(capsys, tmp_path, "--dicomweb", url, "--study", head_study.study_uid),
                 "closed the connection in the middle of its answer while retrieving instance", "(3 of 24)",
                 "nothing was kept")
    assert handler.cuts == 1  # the cut happened, and nothing after it was asked for
    assert handler.served == 3
