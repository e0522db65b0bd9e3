"""The docks with a real PACS (under Xvfb): "Open from PACS…" in the Volume dock gives the layer the
files give; the Report dock exports the report as a DICOM SR and sends it back to the study."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom

from napari_med3dvlm.inference.dicom_sr import dicom_text, sr_findings
from napari_med3dvlm.io import read_volume
from napari_med3dvlm.widgets.report import ReportWidget
from napari_med3dvlm.widgets.volume import VolumeWidget

from io_assets import PATIENT_TAGS

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
