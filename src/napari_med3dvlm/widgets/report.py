"""The Report dock: generate a findings report for an image layer, watch it stream in, stop it,
copy it, and export it as Markdown and JSON."""

from __future__ import annotations

from pathlib import Path

from napari.utils.notifications import show_info
from qtpy.QtGui import QGuiApplication
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_med3dvlm.inference import DISCLAIMER, ReportRecord, get_engine, stream_report

from napari_med3dvlm.inference.relevance import report_target, sentence_at

from ._common import BusyIndicator, LayerPicker, ScopeBanner, StreamRunner, layer_key, volume_input
from ._relevance import WhereRunner


class ReportWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.records: dict[str, ReportRecord] = {}  # the last report of each layer
        self._target = None
        self._first_piece = True
        self.runner = StreamRunner(self)

        self.layer_picker = LayerPicker(napari_viewer, self)
        self.generate_button = QPushButton("Generate")
        self.generate_button.setToolTip("Write a findings report for the selected layer")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop after the current word; the text so far is kept")
        self.copy_button = QPushButton("Copy")
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("Save the report as Markdown and JSON")
        self.export_sr_button = QPushButton("Export SR…")
        self.export_sr_button.setToolTip("Save the report as a DICOM Structured Report (DICOM layers only)")
        self.send_button = QPushButton("Send to PACS")
        self.send_button.setToolTip("Store the report as a DICOM SR in the study on the PACS the series came from")
        self.send_worker = None
        self.where_button = QPushButton("Show where")  # relevance map of the selected sentence
        self.where = WhereRunner(napari_viewer, self.where_button, None, self)
        self.text = QPlainTextEdit()
        self.text.setReadOnly(True)
        self.text.setPlaceholderText("Pick a layer and press Generate.")
        self.status = BusyIndicator()
        self.where.status = self.status
        self.scope_banner = ScopeBanner(self)  # "outside what this model knows", above the text
        disclaimer = QLabel(DISCLAIMER)
        disclaimer.setWordWrap(True)
        disclaimer.setStyleSheet("font-size: 10px; color: #b0b0b0;")

        row = QHBoxLayout()
        row.addWidget(QLabel("Layer"))
        row.addWidget(self.layer_picker, 1)
        buttons = QHBoxLayout()
        for button in (self.generate_button, self.stop_button, self.copy_button, self.export_button):
            buttons.addWidget(button)
        buttons.addWidget(self.where_button)
        buttons.addWidget(self.export_sr_button)
        buttons.addWidget(self.send_button)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addLayout(buttons)
        layout.addWidget(self.scope_banner)
        layout.addWidget(self.text, 1)
        layout.addWidget(self.status)
        layout.addWidget(disclaimer)

        self.generate_button.clicked.connect(self.generate)
        self.stop_button.clicked.connect(self.runner.stop)
        self.copy_button.clicked.connect(self.copy)
        self.export_button.clicked.connect(self._export_dialog)
        self.export_sr_button.clicked.connect(self._export_sr_dialog)
        self.send_button.clicked.connect(self.send_to_pacs)
        self.where_button.clicked.connect(self.show_where)
        self.where.runner.running_changed.connect(lambda _: self._update_buttons())
        self.layer_picker.layer_changed.connect(self._layer_changed)
        self.runner.piece.connect(self._append)
        napari_viewer.layers.events.removed.connect(lambda event: self.records.pop(layer_key(event.value), None))
        self.runner.done.connect(self._done)
        self.runner.failed.connect(lambda message: self.status.idle(f"Error: {message}"))
        self.runner.running_changed.connect(lambda _: self._update_buttons())
        self._update_buttons()

    @property
    def record(self) -> ReportRecord | None:
        """The finished report of the selected layer, if any."""
        layer = self.layer_picker.layer()
        return None if layer is None else self.records.get(layer_key(layer))

    def generate(self) -> None:
        layer = self.layer_picker.layer()
        if layer is None or self.runner.running:
            return
        self._target = layer_key(layer)
        self.records.pop(self._target, None)
        self.text.clear()
        self.status.busy("Loading the model and encoding the volume…")
        self._first_piece = True
        self.scope_banner.show_result(None)
        self.runner.start(stream_report, get_engine(), volume_input(layer), on_scope=self.scope_banner.report)

    def stop(self) -> None:
        self.runner.stop()

    def _append(self, piece: str) -> None:
        if self._first_piece:
            piece = piece.lstrip()
            if not piece:
                return
            self.status.busy("Generating…")
            self._first_piece = False
        cursor = self.text.textCursor()
        cursor.movePosition(cursor.MoveOperation.End)
        cursor.insertText(piece)
        self.text.setTextCursor(cursor)

    def _done(self, record: ReportRecord) -> None:
        self.records[self._target] = record
        self._layer_changed()
        state = "Stopped" if record.stopped else "Done"
        self.status.idle(f"{state} in {record.duration_s:.1f} s · {record.model_id}")

    def _layer_changed(self, *_) -> None:
        if not self.runner.running:
            record = self.record
            self.text.setPlainText(record.text if record else "")
            self.scope_banner.show_result(record.scope if record else None)
            self.status.idle("")
        self._update_buttons()

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.text.toPlainText())

    def export(self, path) -> tuple[Path, Path]:
        """Write ``<path>.md`` and ``<path>.json`` (any suffix on ``path`` is replaced)."""
        if self.record is None:
            raise RuntimeError("there is no finished report to export")
        path = Path(path)
        stem = path.name.removesuffix(".json").removesuffix(".md")
        return self.record.write(path.parent, stem)

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export report", "report.md", "Markdown (*.md)")
        if path:
            md, js = self.export(path)
            show_info(f"Report saved as {md.name} and {js.name}")

    def dicom_source(self):
        """The `io.DicomSource` of the selected layer (None unless it was read from DICOM)."""
        from napari_med3dvlm.io import layer_dicom_source

        layer = self.layer_picker.layer()
        return None if layer is None else layer_dicom_source(layer.metadata)

    def report_sr(self):
        """The finished report of the selected layer as a DICOM SR dataset (`inference.dicom_sr`)."""
        from napari_med3dvlm.inference.dicom_sr import build_report_sr

        record = self.record
        if record is None:
            raise RuntimeError("there is no finished report to export")
        return build_report_sr(self.dicom_source(), record.text, model_id=record.model_id, complete=not record.stopped)

    def export_sr(self, path) -> Path:
        """Write the report as a DICOM SR file at ``path``."""
        from napari_med3dvlm.inference.dicom_sr import write_sr

        return write_sr(self.report_sr(), path)

    def _export_sr_dialog(self) -> None:
        from ._pacs import export_sr_dialog

        export_sr_dialog(self, self.export_sr, "report.dcm")

    def send_to_pacs(self):
        """Store the report as a DICOM SR on the server the layer came from (STOW-RS, in a worker);
        returns the worker."""
        from ._pacs import send_sr

        source = self.dicom_source()
        if self.record is None or source is None or not source.server or self.send_worker is not None:
            return None
        return send_sr(self, self.report_sr, source.server, "report", self._update_buttons)

    def _update_buttons(self) -> None:
        running = self.runner.running
        self.generate_button.setEnabled(not running and self.layer_picker.layer() is not None)
        self.stop_button.setEnabled(running)
        self.copy_button.setEnabled(not running)
        self.layer_picker.setEnabled(not running)
        self.export_button.setEnabled(not running and self.record is not None)
        source = self.dicom_source()
        self.export_sr_button.setEnabled(not running and self.record is not None and source is not None)
        self.send_button.setEnabled(
            not running and self.record is not None and bool(source and source.server) and self.send_worker is None
        )
        self.where_button.setEnabled(self.where.running or (not running and self.record is not None))

    def selected_span(self) -> tuple[int, int] | None:
        """The selected text of the report (trimmed), else the sentence under the cursor."""
        text = self.record.text if self.record else ""
        cursor = self.text.textCursor()
        start, end = sorted((cursor.selectionStart(), cursor.selectionEnd()))
        start, end = max(0, start), min(len(text), end)
        if end > start and text[start:end].strip():
            piece = text[start:end]
            return start + len(piece) - len(piece.lstrip()), end - (len(piece) - len(piece.rstrip()))
        return sentence_at(text, cursor.position())

    def show_where(self) -> None:
        """Map where the model looked for the selected sentence; while it runs, the button cancels."""
        if self.where.running:
            self.where.cancel()
            return
        record, layer, span = self.record, self.layer_picker.layer(), self.selected_span()
        if record is None or layer is None or span is None:
            return
        request = record.request

        def target(engine):
            return report_target(engine.proj_out_num, record.text, span[0], span[1], request)

        self.where.start(layer, target)

    def closeEvent(self, event) -> None:
        self.runner.stop()
        self.where.cancel()
        super().closeEvent(event)
