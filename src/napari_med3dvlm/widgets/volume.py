"""The Volume dock: open scans, pick a series, choose the display window (which is also the window
the model sees), and overlay exactly what the model is given."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari.utils.notifications import show_error
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLayout,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_med3dvlm.inference import get_engine
from napari_med3dvlm.io import PUBLISHED_INPUT_SIZE, WINDOW_PRESETS, model_input_overlay
from napari_med3dvlm.model.sources import input_size

from ._common import (
    MODEL_INPUT_KEY,
    MODEL_WINDOW_KEY,
    LayerPicker,
    layer_array,
    layer_key,
    layer_modality,
    layer_window,
    run_in_worker,
    volume_input,
)

AUTO = "auto (file / modality default)"


def add_volume_layer(viewer, volume, name: str | None = None):
    """Add a `Volume` as an image layer the same way the reader does (mm scale, window, metadata)."""
    from napari_med3dvlm.io import volume_layer_data

    data, kwargs, _ = volume_layer_data(volume, name)
    return viewer.add_image(data, **kwargs)


def model_input_for(layer, image_size=PUBLISHED_INPUT_SIZE):
    """(model input array (D, H, W), scale, translate) overlaying ``layer`` in world coordinates."""
    volume = volume_input(layer)
    overlay = model_input_overlay(volume, image_size, volume.window)
    return overlay.data, overlay.scale, overlay.translate


class VolumeWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._path: Path | None = None
        self._pending = []  # series (headers) of the last opened path
        self.read_worker = None
        self.model_input_worker = None

        self.open_file_button = QPushButton("Open file…")
        self.open_folder_button = QPushButton("Open folder…")
        self.open_pacs_button = QPushButton("Open from PACS…")
        self.open_pacs_button.setToolTip("Search a DICOMweb server (PACS, archive) and open a series")
        self.pacs_dialog = None
        self.series = QComboBox()
        self.add_series_button = QPushButton("Add series")
        self.series_row = QWidget()
        series_layout = QHBoxLayout(self.series_row)
        series_layout.setContentsMargins(0, 0, 0, 0)
        series_layout.addWidget(self.series, 1)
        series_layout.addWidget(self.add_series_button)
        self.series_row.setVisible(False)

        self.layer_picker = LayerPicker(napari_viewer, self)
        self.info = QLabel("No volume")
        self.info.setMinimumHeight(2 * self.info.fontMetrics().lineSpacing() + 4)  # never clipped
        self.window = QComboBox()
        self.window.addItem(AUTO, None)
        for name, (center, width) in WINDOW_PRESETS.items():
            self.window.addItem(f"{name} (C {center:g} / W {width:g})", name)
        self.window.setToolTip("Display window; the model is given the same window")
        self.model_view = QCheckBox("Show what the model sees")
        self.model_view.setToolTip("Overlay the cropped, resized and windowed model input")
        self.status = QLabel("")
        self.status.setWordWrap(False)  # word-wrapped labels upset the dock's minimum height

        open_row = QHBoxLayout()
        open_row.addWidget(self.open_file_button)
        open_row.addWidget(self.open_folder_button)
        open_row.addWidget(self.open_pacs_button)
        form = QGridLayout()
        for row, (label, combo) in enumerate((("Layer", self.layer_picker), ("Window", self.window))):
            form.addWidget(QLabel(label), row, 0)
            form.addWidget(combo, row, 1)
        form.setColumnStretch(1, 1)
        layout = QVBoxLayout(self)
        layout.setSizeConstraint(QLayout.SizeConstraint.SetMinimumSize)  # a squeezed dock clips combo boxes
        layout.addLayout(open_row)
        layout.addWidget(self.series_row)
        layout.addLayout(form)
        layout.addWidget(self.info)
        layout.addWidget(self.model_view)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.open_file_button.clicked.connect(self._open_file_dialog)
        self.open_folder_button.clicked.connect(self._open_folder_dialog)
        self.open_pacs_button.clicked.connect(self.open_pacs)
        self.add_series_button.clicked.connect(lambda: self.add_series(self.series.currentIndex()))
        self.layer_picker.layer_changed.connect(self._layer_changed)
        self.window.currentIndexChanged.connect(lambda _: self.apply_window())
        self.model_view.toggled.connect(self.show_model_input)
        self._layer_changed(self.layer_picker.layer())

    # -- opening ----------------------------------------------------------------------------------

    def open_path(self, path):
        """List the series in a file or folder (headers only, in the background); a single series
        is then read and added, several are offered in the series list. Returns the worker."""
        from napari_med3dvlm.io import list_series

        self._path = Path(path)
        self.status.setText(f"Reading {self._path.name}…")
        return self._read(list_series, self._path, returned=self._series_listed)

    def _series_listed(self, infos) -> None:
        self._pending = list(infos)
        self.series.clear()
        for number, info in enumerate(infos, start=1):
            self.series.addItem(self._series_label(number, info))
        self.series_row.setVisible(len(infos) > 1)
        if len(infos) == 1:
            self.add_series(0)
        else:
            self.status.setText(f"{len(infos)} series found: pick one and press Add series.")

    @staticmethod
    def _series_label(number: int, info) -> str:
        shape = " x ".join(str(s) for s in info.shape)
        text = f"{number}: {info.modality} {shape}"
        return f"{text} · {info.description}" if info.description else text

    def add_series(self, index: int):
        """Read series ``index`` of the opened path in the background and add it; returns the worker."""
        from napari_med3dvlm.io import read_volume

        if not 0 <= index < len(self._pending):
            return None
        info = self._pending[index]
        self.status.setText(f"Reading series {index + 1}…")
        series = info if len(self._pending) > 1 else None
        return self._read(read_volume, self._path, series, returned=lambda volume: self._add_volume(volume, index))

    @property
    def reading(self) -> bool:
        """Whether a file or folder is being read."""
        return self.read_worker is not None

    def _read(self, function, *args, returned):
        """Run a reading step in a worker; `reading` is true until the last one started ends."""
        worker = None

        def finished():
            if self.read_worker is worker:
                self.read_worker = None

        worker = run_in_worker(
            function, *args, returned=returned, errored=self._read_failed, finished=finished, start=False
        )
        self.read_worker = worker
        worker.start()
        return worker

    def _add_volume(self, volume, index: int) -> None:
        name = volume.description or f"{volume.modality} series {index + 1}"
        layer = add_volume_layer(self.viewer, volume, name)
        self.layer_picker.set_layer(layer)
        self.status.setText("")

    def _read_failed(self, err) -> None:
        show_error(f"Could not open {self._path.name}: {err}")
        self.status.setText(f"Could not open {self._path.name}.")

    def open_pacs(self):
        """Show the "Open from PACS" dialog (`_pacs.PacsDialog`); a retrieved series becomes a layer."""
        from ._pacs import PacsDialog

        if self.pacs_dialog is None:
            self.pacs_dialog = PacsDialog(lambda volume: self._add_volume(volume, 0), self)
        self.pacs_dialog.show()
        self.pacs_dialog.raise_()
        return self.pacs_dialog

    def _open_file_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open volume", "", "Volumes (*.nii *.nii.gz *.dcm *.zip);;All files (*)")
        if path:
            self.open_path(path)

    def _open_folder_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open DICOM folder")
        if path:
            self.open_path(path)

    # -- the selected layer -----------------------------------------------------------------------

    def _layer_changed(self, layer) -> None:
        enabled = layer is not None
        self.window.setEnabled(enabled)
        self.model_view.setEnabled(enabled)
        if layer is None:
            self.info.setText("No volume")
            return
        spacing = " x ".join(f"{s:.3g}" for s in layer.scale[-3:])
        shape = " x ".join(str(s) for s in layer_array(layer).shape)
        self.info.setText(f"{layer_modality(layer)} · {shape} voxels (z, y, x)\nspacing {spacing} mm")
        preset = (layer.metadata or {}).get(MODEL_WINDOW_KEY)
        self.window.blockSignals(True)
        self.window.setCurrentIndex(max(0, self.window.findData(preset)))
        self.window.blockSignals(False)
        self.model_view.blockSignals(True)
        self.model_view.setChecked(self._model_input_layer(layer) is not None)
        self.model_view.blockSignals(False)

    def apply_window(self, preset: str | None = "__current__") -> None:
        """Set the display window of the selected layer; the model will use the same window."""
        layer = self.layer_picker.layer()
        if layer is None:
            return
        if preset == "__current__":
            preset = self.window.currentData()
        else:
            self.window.setCurrentIndex(max(0, self.window.findData(preset)))
        layer.metadata[MODEL_WINDOW_KEY] = preset
        if preset is None:
            window = layer_window(layer)
            if window is None and layer_modality(layer).upper() == "CT":
                window = WINDOW_PRESETS["soft tissue"]
        else:
            window = WINDOW_PRESETS[preset]
        if window is not None:
            center, width = window
            layer.contrast_limits = (center - width / 2, center + width / 2)
        if self._model_input_layer(layer) is not None:  # keep the overlay in sync with the window
            self.show_model_input(True)

    # -- what the model sees ----------------------------------------------------------------------

    def _model_input_layer(self, layer):
        key = layer_key(layer)
        for other in self.viewer.layers:
            if (other.metadata or {}).get(MODEL_INPUT_KEY) == key:
                return other
        return None

    def show_model_input(self, visible: bool):
        """Add (or remove) the model-input overlay of the selected layer; returns the worker or None."""
        layer = self.layer_picker.layer()
        if layer is None:
            return None
        existing = self._model_input_layer(layer)
        if existing is not None:
            self.viewer.layers.remove(existing)
        if not visible:
            return None
        self.status.setText("Preparing the model input…")

        def compute():
            try:  # the size is in the model folder's config.json: no weights are loaded for it
                size = input_size(get_engine().settings.model_source)
            except Exception:  # noqa: BLE001 - no readable config: the published model's input size
                size = PUBLISHED_INPUT_SIZE
            return model_input_for(layer, size)

        self.model_input_worker = run_in_worker(
            compute,
            returned=lambda result: self._add_model_input(layer, *result),
            errored=lambda err: show_error(f"Could not prepare the model input: {err}"),
        )
        return self.model_input_worker

    def _add_model_input(self, layer, data, scale, translate) -> None:
        if self._model_input_layer(layer) is not None or layer not in self.viewer.layers:
            return
        self.viewer.add_image(
            data,
            name=f"{layer.name} (model input)",
            scale=scale,
            translate=translate,
            contrast_limits=(0.0, 1.0),
            colormap="magma",
            opacity=0.6,
            blending="additive",
            metadata={MODEL_INPUT_KEY: layer_key(layer)},
        )
        self.layer_picker.set_layer(layer)
        d, h, w = data.shape
        self.status.setText(f"Model input: {d} x {h} x {w} (windowed, cropped, resized)")
