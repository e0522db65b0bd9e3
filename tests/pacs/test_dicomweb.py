"""Reading from a real PACS (Orthanc + DICOMweb): the same volume as from the files, searches without
patient identifiers, credentials, and the CLI's ``report --dicomweb ... --sr --stow`` round trip."""

from __future__ import annotations

import subprocess

import numpy as np
import pydicom
import pytest

from napari_med3dvlm.cli import main
from napari_med3dvlm.inference.dicom_sr import dicom_text, sr_findings
from napari_med3dvlm.io import read_volume
from napari_med3dvlm.io.dicomweb import DicomWebServer, RetrievalCancelled

from io_assets import PATIENT_TAGS
from pacs_assets import PASSWORD, USER

IDENTIFIERS = [v for k, v in PATIENT_TAGS.items() if k != "AccessionNumber"] + ["DOE"]


def assert_same_volume(remote, local):
    assert remote.data.shape == local.data.shape
    assert remote.data.dtype == local.data.dtype
    assert np.array_equal(remote.data, local.data)
    assert remote.spacing == pytest.approx(local.spacing)
    assert np.allclose(remote.affine, local.affine)
    assert remote.plane == local.plane and remote.window == local.window


@pytest.mark.slow
def test_a_series_from_the_pacs_equals_the_same_files_read_from_disk(orthanc, head_study):
    server = DicomWebServer(orthanc.dicomweb)
    remote = server.read_series(head_study.study_uid, head_study.series_uid)
    local = read_volume(head_study.folder)
    assert_same_volume(remote, local)
    assert remote.data.shape[0] == 24 and remote.spacing == pytest.approx((3.0, 1.914, 1.914))
    assert remote.dicom.study_uid == head_study.study_uid and remote.dicom.series_uid == head_study.series_uid
    assert remote.dicom.server == orthanc.dicomweb and len(remote.dicom.headers) == 24
    assert all("PixelData" not in h for h in remote.dicom.headers)  # headers only: the pixels are in the volume
    shown = repr(remote) + remote.description + str(remote.metadata)
    assert not any(value in shown for value in IDENTIFIERS)


def test_study_search_and_series_list_carry_no_patient_identifiers(orthanc, head_study):
    server = DicomWebServer(orthanc.dicomweb)
    everything = server.search_studies()
    assert {s.study_uid for s in everything} >= {head_study.study_uid}
    by_each = [
        server.search_studies(modality="CT"),
        server.search_studies(date="20240301-20240331"),
        server.search_studies(description="CT head"),
        server.search_studies(accession="ACC-55102"),
    ]
    for found in by_each:
        assert head_study.study_uid in {s.study_uid for s in found}
    assert server.search_studies(date="19900101-19901231") == []
    study = next(s for s in by_each[-1] if s.study_uid == head_study.study_uid)
    assert (study.date, study.modalities, study.description, study.n_series, study.n_instances) == (
        "20240315", "CT", "CT head", 1, 24
    )
    assert not any(value in repr(everything) for value in IDENTIFIERS)
    (series,) = server.list_series(head_study.study_uid)
    assert (series.modality, series.description, series.n_instances, series.is_image) == ("CT", "Head CT axial", 24, True)


def test_basic_credentials_open_a_protected_server(orthanc_auth, head_study):
    server = DicomWebServer(orthanc_auth.dicomweb, user=USER, password=PASSWORD)
    volume = server.read_series(head_study.study_uid, head_study.series_uid)
    assert volume.data.shape[0] == 24


def test_stop_ends_a_retrieval_and_keeps_nothing(orthanc, head_study):
    server = DicomWebServer(orthanc.dicomweb)
    plan = server.plan(head_study.study_uid, head_study.series_uid)
    fetched = []
    retrieval = server.retrieve(plan, cancelled=lambda: len(fetched) >= 5)
    with pytest.raises(RetrievalCancelled, match="stopped after 5 of 24 instances; nothing was kept"):
        for count in retrieval:
            fetched.append(count)


@pytest.mark.slow
def test_report_from_the_pacs_as_sr_stored_back_in_the_study(engine, tiny_model_dir, orthanc, head_study, tmp_path, capsys):
    out = tmp_path / "reports"
    code = main(["report", "--dicomweb", orthanc.dicomweb, "--study", head_study.study_uid,
                 "--out", str(out), "--sr", "--stow", "--model", str(tiny_model_dir)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert sorted(p.name for p in out.iterdir()) == ["report-01.dcm", "report-01.json", "report-01.md"]
    assert f"stored on {orthanc.dicomweb}" in captured.out

    # The same report as for the files on disk (same volume, greedy decoding).
    disk = tmp_path / "disk"
    assert main(["report", str(head_study.folder), "--out", str(disk), "--model", str(tiny_model_dir)]) == 0
    assert (disk / "report-01.md").read_text().split("## Provenance")[0] == (out / "report-01.md").read_text().split(
        "## Provenance")[0]

    sr = pydicom.dcmread(out / "report-01.dcm")
    markdown = (out / "report-01.md").read_text()
    findings = markdown.split("## Findings\n\n", 1)[1].split("\n\n## Provenance", 1)[0].strip()
    assert sr_findings(sr) == dicom_text(findings) != ""
    assert sr.VerificationFlag == "UNVERIFIED" and sr.StudyInstanceUID == head_study.study_uid
    assert sr.SeriesInstanceUID != head_study.series_uid and sr.Modality == "SR"
    assert str(sr.PatientName) == PATIENT_TAGS["PatientName"]  # the patient module, copied so the PACS files it
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == head_study.series_uid
    sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in head_study.files}
    assert {item.ReferencedSOPInstanceUID for item in evidence.ReferencedSOPSequence} == sources

    validator = subprocess.run(["dciodvfy", str(out / "report-01.dcm")], capture_output=True, text=True)
    messages = validator.stdout + validator.stderr
    assert "Comprehensive3DSR" in messages
    assert [line for line in messages.splitlines() if line.startswith("Error")] == [], messages

    # Orthanc lists the SR in the source's study.
    series = orthanc.get(f"/dicom-web/studies/{head_study.study_uid}/series")
    modalities = {item["00080060"]["Value"][0]: item["0020000E"]["Value"][0] for item in series}
    assert modalities["SR"] == sr.SeriesInstanceUID and modalities["CT"] == head_study.series_uid

    # No identifier in what the plugin prints or exports as Markdown/JSON.
    shown = captured.out + captured.err + markdown + (out / "report-01.json").read_text()
    assert not any(value in shown for value in IDENTIFIERS + ["ACC-55102"])
