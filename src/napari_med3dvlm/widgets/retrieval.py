"""The Retrieval dock: keep an index of a collection and find volumes by text, report or layer.

Layout and threading only. Indexing and search are `napari_med3dvlm.retrieval` calls run in napari
workers, so the viewer stays responsive and Cancel takes effect between volumes.
"""

from __future__ import annotations

import threading
from pathlib import Path

import platformdirs
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QSize, Qt, Signal
from qtpy.QtGui import QColor, QIcon, QImage, QPixmap
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_med3dvlm.inference import get_engine
from napari_med3dvlm.retrieval import (
    IndexReport,
    VolumeIndex,
    index_folder,
    refresh_index,
    search_text,
    search_volume,
)
from napari_med3dvlm.retrieval import embedder as _embedder
from napari_med3dvlm.retrieval.thumbnail import png_to_array

from ._common import LayerPicker, run_in_worker, volume_input


def _settings_embedder():
    """The SigLIP of the model chosen in Settings (saved or changed this session), on its device and dtype."""
    settings = get_engine().settings
    return _embedder.get_embedder(settings.model_source, settings.device, settings.dtype)

ICON_SIZE = 72
#: Item data role holding a result's scope reasons (empty: inside what the model knows).
SCOPE_ROLE = Qt.ItemDataRole.UserRole + 1


def default_index_path() -> Path:
    return Path(platformdirs.user_data_dir("napari-med3dvlm")) / "index"


def _display_path(path: Path) -> str:
    """Paths under the home folder as ~/..., which is shorter and keeps user names off screenshots."""
    path = Path(path)
    try:
        return "~/" + path.relative_to(Path.home()).as_posix()
    except ValueError:
        return str(path)


def _combined(reports: list[IndexReport], path: Path) -> IndexReport:
    """One summary for a refresh of several folders."""
    total = IndexReport(root=path)
    for report in reports:
        total.total += report.total
        total.unchanged += report.unchanged
        total.embedded += report.embedded
        total.removed += report.removed
        total.failed.extend(report.failed)
        total.cancelled |= report.cancelled
        total.seconds += report.seconds
    return total


def _thumbnail_icon(png: bytes) -> QIcon:
    pixels = png_to_array(png).copy()
    height, width = pixels.shape
    image = QImage(pixels.data, width, height, width, QImage.Format.Format_Grayscale8).copy()
    return QIcon(QPixmap.fromImage(image))


class RetrievalWidget(QWidget):
    """Index folders of volumes; search them by text, a pasted report, or the selected layer."""

    results_changed = Signal(list)  # the SearchHit list on screen
    indexing_finished = Signal(object)  # IndexReport
    busy_changed = Signal(bool)
    _progressed = Signal(object)  # (done, total, message) from the indexing thread

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        #: Returns the embedder (model) to use; called in a worker thread. Tests swap it.
        self.embedder_factory = _settings_embedder
        self.index: VolumeIndex | None = None
        self.hits = []
        self._worker = None
        self._cancel = threading.Event()
        self._progressed.connect(self._on_progress)

        self.index_edit = QLineEdit(_display_path(default_index_path()))
        self.index_edit.setToolTip("Folder where the index is stored (created if missing)")
        self.index_edit.returnPressed.connect(lambda: self.set_index_path(self.index_edit.text()))
        browse = QPushButton("Choose…")
        browse.setToolTip("Choose or create an index folder")
        browse.clicked.connect(self._choose_index)
        self.add_button = QPushButton("Add folder…")
        self.add_button.setToolTip("Index every NIfTI file and DICOM series under a folder (re-adding refreshes it)")
        self.add_button.clicked.connect(self._choose_folder)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("Re-scan every folder in the index: new and changed volumes are embedded, "
                                       "deleted ones removed")
        self.refresh_button.clicked.connect(self.refresh)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.hide()
        self.status = QLabel("")
        self.status.setWordWrap(True)

        self.query_edit = QLineEdit()
        self.query_edit.setPlaceholderText("Describe what you look for, or paste a report")
        self.query_edit.returnPressed.connect(self.search)
        self.k_spin = QSpinBox()
        self.k_spin.setRange(1, 100)
        self.k_spin.setValue(10)
        self.k_spin.setToolTip("Number of results")
        self.search_button = QPushButton("Search")
        self.search_button.clicked.connect(self.search)
        self.layer_picker = LayerPicker(napari_viewer)
        self.layer_search_button = QPushButton("Find similar")
        self.layer_search_button.setToolTip("Use the chosen image layer as the query")
        self.layer_search_button.clicked.connect(self.search_layer)

        self.results = QListWidget()
        self.results.setIconSize(QSize(ICON_SIZE, ICON_SIZE))
        self.results.setToolTip("Double-click to open a volume")
        self.results.itemDoubleClicked.connect(self._open_item)

        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(QLabel("Index"))
        row.addWidget(self.index_edit, 1)
        row.addWidget(browse)
        layout.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(self.add_button)
        row.addWidget(self.refresh_button)
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addWidget(self.query_edit)
        row = QHBoxLayout()
        row.addWidget(QLabel("Results"))
        row.addWidget(self.k_spin)
        row.addStretch(1)
        row.addWidget(self.search_button)
        layout.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(self.layer_picker, 1)
        row.addWidget(self.layer_search_button)
        layout.addLayout(row)
        layout.addWidget(self.results, 1)

    # -- index ---------------------------------------------------------------------------------
    def set_index_path(self, path) -> VolumeIndex | None:
        """Open (or create) the index stored in ``path``."""
        try:
            self.index = VolumeIndex(path)
        except Exception as err:  # unreadable folder, index from a newer version
            show_error(f"Cannot open the index: {err}")
            return None
        self.index_edit.setText(_display_path(self.index.path))
        roots = len(self.index.roots)
        self.status.setText(f"{len(self.index)} volumes from {roots} folder{'s' if roots != 1 else ''}")
        return self.index

    def _current_index(self) -> VolumeIndex | None:
        wanted = Path(self.index_edit.text()).expanduser()
        if self.index is None or self.index.path != wanted.resolve():
            return self.set_index_path(wanted)
        return self.index

    def _choose_index(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Index folder", self.index_edit.text())
        if folder:
            self.set_index_path(folder)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of volumes to index")
        if folder:
            self.add_folder(folder)

    def add_folder(self, folder) -> None:
        """Index (or refresh) a folder in a worker; progress and Cancel work while it runs."""
        index = self._current_index()
        if index is None or self._busy_or_warn():
            return
        self._cancel = threading.Event()
        self.progress.setRange(0, 0)
        self.progress.show()
        self.status.setText(f"Indexing {Path(folder).name}…")

        def run():
            # Emitting a Qt signal from the worker thread queues the update to the GUI thread.
            return index_folder(
                index, folder, self.embedder_factory(), progress=lambda *update: self._progressed.emit(update),
                cancel=self._cancel,
            )

        self._start(run, self._on_indexed)

    def refresh(self) -> None:
        """Refresh every folder already in the index, in a worker."""
        index = self._current_index()
        if index is None or self._busy_or_warn():
            return
        if not index.roots:
            show_info("This index has no folders yet: use Add folder…")
            return
        self._cancel = threading.Event()
        self.progress.setRange(0, 0)
        self.progress.show()
        self.status.setText("Refreshing the index…")

        def run():
            reports = refresh_index(
                index, self.embedder_factory(), progress=lambda *update: self._progressed.emit(update),
                cancel=self._cancel,
            )
            return _combined(reports, index.path)

        self._start(run, self._on_indexed)

    def _on_progress(self, update) -> None:
        done, total, message = update
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.progress.setFormat(f"{done}/{total}")
        self.status.setText(message)

    def _on_indexed(self, report) -> None:
        self.progress.hide()
        self.status.setText(report.summary() + f" · index holds {len(self.index)} volumes")
        for path, error in report.failed[:5]:
            show_info(f"Not indexed: {path}: {error}")
        self.indexing_finished.emit(report)

    def cancel(self) -> None:
        self._cancel.set()

    # -- search --------------------------------------------------------------------------------
    def search(self) -> None:
        """Text (or a pasted report) -> the most similar indexed volumes."""
        text = self.query_edit.text().strip()
        engine = get_engine()
        if engine.settings.backend == "server":  # the index that lives on the server
            if not text or self._busy_or_warn():
                return
            k = self.k_spin.value()

            def run():
                from napari_med3dvlm.retrieval.remote import search_server

                return search_server(engine.client, text, k=k)

            self.status.setText(f"Searching the server's index ({engine.settings.server_url})…")
            self._start(run, self.show_results)
            return
        index = self._current_index()
        if not text or index is None or self._busy_or_warn():
            return
        k = self.k_spin.value()

        def run():
            return search_text(index, self.embedder_factory(), text, k=k)

        self.status.setText("Searching…")
        self._start(run, self.show_results)

    def search_layer(self) -> None:
        """The chosen image layer -> the most similar indexed volumes."""
        layer = self.layer_picker.layer()
        index = self._current_index()
        if layer is None:
            show_info("Open a 3D image layer to search with it")
            return
        if index is None or self._busy_or_warn():
            return
        volume, k = volume_input(layer), self.k_spin.value()

        def run():
            return search_volume(index, self.embedder_factory(), volume, k=k)

        self.status.setText(f"Searching for volumes like {layer.name}…")
        self._start(run, self.show_results)

    def show_results(self, hits) -> None:
        self.hits = list(hits)
        self.results.clear()
        for hit in self.hits:
            shape = "×".join(str(s) for s in hit.shape)
            details = f"{hit.modality} {shape}"
            if hit.description and hit.description not in hit.relative_path:
                details += f" · {hit.description}"
            label = f"{hit.score:.3f}   {hit.relative_path}\n{details}"
            scope = getattr(hit, "scope", ())
            if scope:  # outside what the model knows: its score says little
                label = f"⚠ {label}\noutside what the model knows"
            item = QListWidgetItem(_thumbnail_icon(hit.thumbnail), label)
            item.setData(Qt.ItemDataRole.UserRole, str(hit.path))
            item.setData(SCOPE_ROLE, list(scope))
            item.setToolTip(str(hit.path) + "".join(f"\n⚠ {reason}" for reason in scope))
            if scope:
                item.setForeground(QColor("#ffc94d"))
            self.results.addItem(item)
        self.status.setText(f"{len(self.hits)} results" if self.hits else "No results: is the index empty?")
        self.results_changed.emit(self.hits)

    def _open_item(self, item: QListWidgetItem) -> None:
        path = item.data(Qt.ItemDataRole.UserRole)
        if not Path(path).exists():  # a hit of a server's index, on a disk this computer does not see
            show_info(f"{Path(path).name} is on the server, not on this computer; open it there or from a "
                      "shared folder")
            return
        try:
            self.viewer.open(path, plugin="napari-med3dvlm")
        except Exception as err:
            show_error(f"Cannot open {Path(path).name}: {err}")

    # -- workers -------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _busy_or_warn(self) -> bool:
        if self.busy:
            show_info("Retrieval is busy; wait or cancel first")
        return self.busy

    def _start(self, function, on_return) -> None:
        # Errors are shown as notifications by _on_error, never raised in the GUI thread.
        self._worker = run_in_worker(
            function, returned=on_return, errored=self._on_error, finished=self._on_finished, start=False
        )
        self._set_busy(True)
        self._worker.start()

    def _on_error(self, err: BaseException) -> None:
        self.progress.hide()
        self.status.setText("")
        show_error(str(err) or type(err).__name__)

    def _on_finished(self) -> None:
        self._worker = None
        self._set_busy(False)

    def _set_busy(self, busy: bool) -> None:
        for button in (self.add_button, self.refresh_button, self.search_button, self.layer_search_button):
            button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        self.busy_changed.emit(busy)
