"""The "Open from PACS…" dialog of the Volume dock: a DICOMweb server, a study search (date,
modality, description, accession; no patient name or ID is requested or shown), the study's series
(modality, description, slice count), and one series retrieved with a napari progress bar and a
Stop button, read by the same reader as files. Every request runs in a napari thread worker.
"""

from __future__ import annotations

import json

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from napari_med3dvlm.inference.pacs_cli import connect, save_credentials, stored_credentials
from napari_med3dvlm.io.dicomweb import DEFAULT_MAX_BYTES, format_bytes
from napari_med3dvlm.settings import config_dir

from ._common import run_in_worker

#: The last server used, beside the settings (not a secret: credentials go to the secrets file).
PACS_FILE = "pacs.json"
AUTH_MODES = ("No login", "User and password", "Token")


def last_server() -> str:
    try:
        return str(json.loads((config_dir() / PACS_FILE).read_text(encoding="utf-8")).get("url", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def remember_server(url: str) -> None:
    path = config_dir() / PACS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"url": url}), encoding="utf-8")


def store_sr_worker(sr, server_url: str, status, what: str, finished):
    """An unstarted worker storing ``sr`` (STOW-RS) on the server a layer came from, reporting in
    ``status`` and notifications (the Report and Chat docks' "Send to PACS"); ``what`` names the
    object ("report", "conversation"). None, with an error shown, when the server cannot be set up."""
    try:
        server = connect(server_url)
    except ValueError as err:
        show_error(f"Could not send the {what}: {err}")
        return None
    status.busy(f"Sending the {what} to {server.url}…")

    def sent(where):
        status.idle(f"Stored on {server.url}: {where}")
        show_info(f"The {what} is stored on {server.url} in the source's study")

    def failed(err):
        status.idle(f"Not stored: {err}")
        show_error(f"Could not send the {what}: {err}")

    return run_in_worker(server.store, sr, returned=sent, errored=failed, finished=finished, start=False)


def export_sr_dialog(parent, export, default_name: str) -> None:
    """The docks' "Export SR…": ask for a file, write it with ``export(path)``, say where it went."""
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getSaveFileName(parent, "Export DICOM SR", default_name, "DICOM (*.dcm)")
    if not path:
        return
    try:
        written = export(path)
    except ValueError as err:
        show_error(f"Could not write the DICOM SR: {err}")
        return
    show_info(f"DICOM SR saved as {written.name}")


def send_sr(dock, build_sr, server_url: str, what: str, update_buttons):
    """The docks' "Send to PACS": build the SR (``build_sr()``; a ValueError is shown), store it in
    a worker kept as ``dock.send_worker`` until it ends, and refresh the dock's buttons around it.
    Returns the started worker, or None."""
    try:
        sr = build_sr()
    except ValueError as err:
        show_error(f"Could not send the {what}: {err}")
        return None

    def finished():
        dock.send_worker = None
        update_buttons()

    dock.send_worker = store_sr_worker(sr, server_url, dock.status, what, finished)
    if dock.send_worker is None:
        return None
    update_buttons()
    dock.send_worker.start()
    return dock.send_worker


def _table(headers) -> QTableWidget:
    table = QTableWidget(0, len(headers))
    table.setHorizontalHeaderLabels(headers)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.verticalHeader().setVisible(False)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    table.horizontalHeader().setStretchLastSection(True)
    return table


def _fill(table: QTableWidget, rows) -> None:
    table.setRowCount(0)
    for row in rows:
        index = table.rowCount()
        table.insertRow(index)
        for column, value in enumerate(row):
            table.setItem(index, column, QTableWidgetItem("" if value is None else str(value)))


class PacsDialog(QDialog):
    """Search a DICOMweb server and open one series; ``on_volume(volume)`` receives it."""

    def __init__(self, on_volume, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Open from PACS")
        self.on_volume = on_volume
        self.studies, self.series = [], []
        self.worker = None  # the request running now (one at a time)

        self.url = QLineEdit(last_server())
        self.url.setPlaceholderText("http://pacs:8042/dicom-web")
        self.auth = QComboBox()
        self.auth.addItems(AUTH_MODES)
        self.user = QLineEdit()
        self.user.setPlaceholderText("user")
        self.secret = QLineEdit()
        self.secret.setEchoMode(QLineEdit.EchoMode.Password)
        self.secret.setPlaceholderText("password or token")
        self.remember = QCheckBox("Remember")
        self.remember.setToolTip("Store the credentials in the user-only secrets file beside the settings")
        self.date = QLineEdit()
        self.date.setPlaceholderText("YYYYMMDD or YYYYMMDD-YYYYMMDD")
        self.modality = QLineEdit()
        self.modality.setPlaceholderText("CT, MR, ...")
        self.description = QLineEdit()
        self.description.setPlaceholderText("part of the study description")
        self.accession = QLineEdit()
        self.search_button = QPushButton("Search")
        self.study_table = _table(["Date", "Modalities", "Description", "Accession", "Series", "Images"])
        self.series_table = _table(["#", "Modality", "Description", "Slices"])
        self.open_button = QPushButton("Open series")
        self.stop_button = QPushButton("Stop")
        self.status = QLabel("")
        self.status.setWordWrap(True)

        server = QGridLayout()
        server.addWidget(QLabel("Server"), 0, 0)
        server.addWidget(self.url, 0, 1, 1, 3)
        server.addWidget(self.auth, 1, 0)
        server.addWidget(self.user, 1, 1)
        server.addWidget(self.secret, 1, 2)
        server.addWidget(self.remember, 1, 3)
        search = QFormLayout()
        search.addRow("Study date", self.date)
        search.addRow("Modality", self.modality)
        search.addRow("Description", self.description)
        search.addRow("Accession", self.accession)
        buttons = QHBoxLayout()
        buttons.addWidget(self.status, 1)
        buttons.addWidget(self.open_button)
        buttons.addWidget(self.stop_button)
        layout = QVBoxLayout(self)
        layout.addLayout(server)
        layout.addLayout(search)
        layout.addWidget(self.search_button)
        layout.addWidget(QLabel("Studies"))
        layout.addWidget(self.study_table, 2)
        layout.addWidget(QLabel("Series"))
        layout.addWidget(self.series_table, 1)
        layout.addLayout(buttons)
        self.resize(720, 620)

        self.auth.currentIndexChanged.connect(self._auth_changed)
        self.url.editingFinished.connect(self._load_credentials)
        self.search_button.clicked.connect(self.search)
        self.study_table.itemSelectionChanged.connect(self._study_selected)
        self.series_table.itemSelectionChanged.connect(self._update_buttons)
        self.series_table.doubleClicked.connect(lambda _: self.open_selected())
        self.open_button.clicked.connect(self.open_selected)
        self.stop_button.clicked.connect(self.stop)
        self._load_credentials()
        self._auth_changed()

    # -- the server ---------------------------------------------------------------------------

    def _auth_changed(self, *_) -> None:
        mode = self.auth.currentIndex()
        self.user.setVisible(mode == 1)
        self.secret.setVisible(mode > 0)
        self.remember.setVisible(mode > 0)

    def _load_credentials(self) -> None:
        url = self.url.text().strip()
        stored = stored_credentials(url) if url else {}
        if stored.get("token"):
            self.auth.setCurrentIndex(2)
            self.secret.setText(stored["token"])
        elif stored.get("user"):
            self.auth.setCurrentIndex(1)
            self.user.setText(stored["user"])
            self.secret.setText(stored.get("password") or "")

    def server(self):
        """A `DicomWebServer` for the fields as they are (credentials stored if asked)."""
        url, mode, secret = self.url.text().strip(), self.auth.currentIndex(), self.secret.text()
        user = self.user.text().strip() if mode == 1 else None
        password = secret if mode == 1 else None
        token = secret if mode == 2 else None
        server = connect(url, user, password, token)
        remember_server(server.url)
        if self.remember.isChecked():
            save_credentials(server.url, user or "", password or "", token or "")
        return server

    def _server_or_none(self):
        try:
            return self.server()
        except ValueError as err:  # DicomWebError: a bad address
            self._failed(err)
            return None

    # -- requests in workers --------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def _run(self, function, *args, returned, busy: str, progress=None, **kwargs):
        self.status.setText(busy)
        worker = None

        def finished():
            if self.worker is worker:
                self.worker = None
            self._update_buttons()

        if progress is not None:
            kwargs["_progress"] = progress  # napari's progress bar, one step per yield
        worker = run_in_worker(
            function, *args, returned=returned, errored=self._failed, finished=finished, start=False, **kwargs
        )
        self.worker = worker
        self._update_buttons()
        worker.start()
        return worker

    def _failed(self, err) -> None:
        message = " ".join(str(err).split()) or type(err).__name__
        self.status.setText(message)
        show_error(f"PACS: {message}")

    def search(self):
        """Search for studies with the filters (QIDO-RS); returns the worker."""
        if self.busy:
            return None
        filters = dict(date=self.date.text(), modality=self.modality.text(), description=self.description.text(),
                       accession=self.accession.text())
        server = self._server_or_none()
        if server is None:
            return None

        def run():
            return server.search_studies(**filters)

        return self._run(run, returned=self._studies_found, busy="Searching…")

    def _studies_found(self, studies) -> None:
        self.studies = list(studies)
        _fill(self.study_table, [(s.date, s.modalities, s.description, s.accession, s.n_series, s.n_instances)
                                 for s in self.studies])
        _fill(self.series_table, [])
        self.series = []
        self.status.setText(f"{len(self.studies)} studies found" + (": pick one." if self.studies else "."))

    def _study_selected(self):
        rows = self.study_table.selectionModel().selectedRows()
        if not rows or self.busy:
            return None
        study = self.studies[rows[0].row()]
        server = self._server_or_none()
        if server is None:
            return None

        def run():
            return server.list_series(study.study_uid)

        return self._run(run, returned=self._series_listed, busy="Listing the series…")

    def _series_listed(self, series) -> None:
        self.series = list(series)
        _fill(self.series_table, [(s.number, s.modality, s.description, s.n_instances) for s in self.series])
        images = [i for i, s in enumerate(self.series) if s.is_image]
        if images:
            self.series_table.selectRow(images[0])
        self.status.setText(f"{len(self.series)} series; {len(images)} with images.")

    def _update_buttons(self) -> None:
        selected = self.series_table.selectionModel().selectedRows()
        image = bool(selected) and self.series[selected[0].row()].is_image
        self.open_button.setEnabled(image and not self.busy)
        self.search_button.setEnabled(not self.busy)
        self.stop_button.setEnabled(self.busy)

    # -- retrieval --------------------------------------------------------------------------------

    def open_selected(self, max_bytes: int | None = DEFAULT_MAX_BYTES):
        """Size the selected series (its metadata), ask above the limit, then retrieve it with a
        progress bar; returns the worker of the first step."""
        study_rows = self.study_table.selectionModel().selectedRows()
        series_rows = self.series_table.selectionModel().selectedRows()
        if not study_rows or not series_rows or self.busy:
            return None
        study, series = self.studies[study_rows[0].row()], self.series[series_rows[0].row()]
        server = self._server_or_none()
        if not series.is_image or server is None:
            return None

        def plan():
            return server, server.plan(study.study_uid, series.series_uid)

        return self._run(plan, returned=lambda result: self._planned(*result, max_bytes), busy="Sizing the series…")

    def _planned(self, server, plan, max_bytes) -> None:
        if max_bytes is not None and plan.nbytes > max_bytes:
            answer = QMessageBox.question(
                self, "Large series",
                f"This series holds {len(plan.instances)} instances, {format_bytes(plan.nbytes)} of pixels. Retrieve it?",
            )
            if answer != QMessageBox.StandardButton.Yes:
                self.status.setText("Not retrieved.")
                return
        try:
            server.check_size([plan], None)  # the free memory, still
        except Exception as err:  # noqa: BLE001 - shown like any other fault
            self._failed(err)
            return
        total = len(plan.instances)
        self.retrieval = self._run(
            server.retrieve, plan, returned=self._retrieved, busy=f"Retrieving {total} instances…",
            progress={"total": total, "desc": "Retrieving from the PACS"},
        )
        self.retrieval.yielded.connect(lambda done: self.status.setText(f"Retrieved {done} of {total} instances…"))

    def _retrieved(self, volume) -> None:
        self.status.setText(f"Opened {volume.description or 'the series'}.")
        self.on_volume(volume)

    def stop(self) -> None:
        """Stop the running request; a retrieval stops between instances and keeps nothing."""
        if self.worker is not None:
            self.worker.quit()
            self.status.setText("Stopped; nothing was kept.")

    def closeEvent(self, event) -> None:
        self.stop()
        super().closeEvent(event)
