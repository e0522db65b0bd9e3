"""The docks with a real PACS (under Xvfb): "Open from PACS…" in the Volume dock gives the layer the
files give; the Report dock exports the report as a DICOM SR and sends it back to the study."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

from napari_med3dvlm.inference.dicom_sr import dicom_text, sr_findings
from napari_med3dvlm.io import read_volume
from napari_med3dvlm.widgets.report import ReportWidget
from napari_med3dvlm.widgets.volume import VolumeWidget

from io_assets import PATIENT_TAGS

# slow: docks against a DICOMweb server with the demo model
pytestmark = pytest.mark.slow

#: Set to a folder to save the dialog's screenshot for docs/usage.md.
SHOTS_ENV = "NAPARI_MED3DVLM_DOC_SHOTS"


def _cells(table) -> list[str]:
    return [table.item(r, c).text() for r in range(table.rowCount()) for c in range(table.columnCount())]


def test_open_from_pacs_then_report_as_sr_sent_back(make_napari_viewer, qtbot, orthanc, head_study, engine, tmp_path):
    viewer = make_napari_viewer()
    dock = VolumeWidget(viewer)
    dialog = dock.open_pacs()
    dialog.url.setText(orthanc.dicomweb)
    dialog.description.setText("head")
    dialog.modality.setText("CT")
    dialog.search()
    qtbot.waitUntil(lambda: not dialog.busy, timeout=20000)
    assert dialog.study_table.rowCount() == 1
    date, modalities, description = _cells(dialog.study_table)[:3]
    assert (date, description) == ("20240315", "CT head") and "CT" in modalities.split("/")  # SR too once reported
    assert not any(value in " ".join(_cells(dialog.study_table)) for value in ("DOE", "JANE", "PID-73519", "19610412"))

    dialog.study_table.selectRow(0)
    qtbot.waitUntil(lambda: not dialog.busy and dialog.series_table.rowCount() >= 1, timeout=20000)
    rows = [[dialog.series_table.item(r, c).text() for c in range(4)] for r in range(dialog.series_table.rowCount())]
    assert ["1", "CT", "Head CT axial", "24"] in rows
    assert dialog.open_button.isEnabled()

    # Stop during the retrieval keeps nothing.
    dialog.open_selected()
    qtbot.waitUntil(lambda: getattr(dialog, "retrieval", None) is not None, timeout=20000)
    dialog.stop()
    qtbot.waitUntil(lambda: not dialog.busy, timeout=20000)
    assert len(viewer.layers) == 0

    if os.environ.get(SHOTS_ENV):
        dialog.status.setText("24 instances · 768.0 KiB")
        dialog.grab().save(str(Path(os.environ[SHOTS_ENV]) / "pacs_dialog.png"))

    dialog.open_selected()
    qtbot.waitUntil(lambda: len(viewer.layers) == 1, timeout=30000)
    layer = viewer.layers[0]
    local = read_volume(head_study.folder)
    assert np.array_equal(layer.data, local.data)
    assert np.allclose(layer.scale, local.spacing) and np.allclose(layer.translate, local.origin)
    assert np.allclose(layer.metadata["affine"], local.affine)
    assert layer.metadata["study_uid"] == head_study.study_uid and layer.metadata["series_uid"] == head_study.series_uid
    assert layer.name == "Head CT axial"

    report = ReportWidget(viewer)
    report.layer_picker.set_layer(layer)
    assert not report.export_sr_button.isEnabled()  # no report yet
    report.generate()
    qtbot.waitUntil(lambda: report.record is not None, timeout=60000)
    assert report.export_sr_button.isEnabled() and report.send_button.isEnabled()
    sr = pydicom.dcmread(report.export_sr(tmp_path / "report.dcm"))
    assert sr_findings(sr) == dicom_text(report.record.text) and sr.StudyInstanceUID == head_study.study_uid
    assert str(sr.PatientName) == PATIENT_TAGS["PatientName"]

    worker = report.send_to_pacs()
    assert worker is not None
    qtbot.waitUntil(lambda: report.send_worker is None, timeout=20000)
    assert f"Stored on {orthanc.dicomweb}" in report.status.label.text()
    stored = orthanc.get(f"/dicom-web/studies/{head_study.study_uid}/series?Modality=SR")
    assert stored  # the study now lists an SR series


def test_chat_dock_exports_and_sends_the_conversation_as_sr(make_napari_viewer, qtbot, orthanc, head_study, engine,
                                                             tmp_path):
    import subprocess

    from napari_med3dvlm.inference.dicom_sr import sr_questions
    from napari_med3dvlm.io.dicomweb import DicomWebServer
    from napari_med3dvlm.widgets.chat import ChatWidget
    from napari_med3dvlm.widgets.volume import add_volume_layer

    viewer = make_napari_viewer()
    plain = viewer.add_image(np.zeros((8, 16, 16), np.float32), name="not DICOM")
    layer = add_volume_layer(viewer, DicomWebServer(orthanc.dicomweb).read_series(head_study.study_uid,
                                                                                  head_study.series_uid))
    chat = ChatWidget(viewer)
    chat.layer_picker.set_layer(layer)
    assert not chat.export_sr_button.isEnabled() and not chat.pacs_button.isEnabled()  # nothing asked yet

    assert chat.send("What is shown?")
    qtbot.waitUntil(lambda: not chat.runner.running and len(chat.conversation().turns) == 1, timeout=60000)
    chat.closed_mode.setChecked(True)
    for edit, text in zip(chat.choice_inputs, ("Brain", "Liver", "Kidney", "Lung")):
        edit.setText(text)
    assert chat.send("Which organ is shown?")
    qtbot.waitUntil(lambda: not chat.runner.running and len(chat.conversation().turns) == 2, timeout=60000)
    assert chat.export_sr_button.isEnabled() and chat.pacs_button.isEnabled()

    turns = chat.conversation().turns
    path = chat.export_sr(tmp_path / "chat.dcm")
    sr = pydicom.dcmread(path)
    assert sr_questions(sr) == [
        ("What is shown?", dicom_text(turns[0].answer) or "(no answer)"),
        ("Which organ is shown? Choices: A. Brain B. Liver C. Kidney D. Lung", dicom_text(turns[1].answer)),
    ]
    assert sr.StudyInstanceUID == head_study.study_uid and sr.VerificationFlag == "UNVERIFIED"
    check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    assert [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")] == []

    worker = chat.send_to_pacs()
    assert worker is not None and not chat.pacs_button.isEnabled()  # one send at a time
    qtbot.waitUntil(lambda: chat.send_worker is None, timeout=20000)
    assert f"Stored on {orthanc.dicomweb}" in chat.status.label.text()
    assert chat.pacs_button.isEnabled()
    stored = orthanc.get(f"/dicom-web/studies/{head_study.study_uid}/series?Modality=SR")
    assert any(item["0008103E"]["Value"][0] == "Med3DVLM questions and answers (research use only)" for item in stored)
    assert not any(value in chat.status.label.text() + chat.transcript() for value in PATIENT_TAGS.values())

    # A layer not read from DICOM has a conversation but no SR to make.
    chat.layer_picker.set_layer(plain)
    chat.closed_mode.setChecked(False)
    assert chat.send("What is shown?")
    qtbot.waitUntil(lambda: not chat.runner.running and len(chat.conversation().turns) == 1, timeout=60000)
    assert not chat.export_sr_button.isEnabled() and not chat.pacs_button.isEnabled()
