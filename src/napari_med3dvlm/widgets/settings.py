"""The Settings dock: which model, where it runs, and how it samples. Saved to the user's config
folder so the docks and the command line agree across sessions."""

from __future__ import annotations

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_med3dvlm.inference import InferenceSettings, get_engine, save_settings, use_settings
from napari_med3dvlm.model.sources import EMBEDDED
from napari_med3dvlm.settings import DEVICES, DTYPES, SERVER_TOKEN, load_secret, save_secret

_SOURCES = (("Embedded demo model", "embedded"), ("Local folder", "folder"), ("Hub id (cached)", "hub"))
_BACKENDS = (("This computer", "local"), ("Server (napari-med3dvlm serve)", "server"))


class SettingsWidget(QWidget):
    def __init__(self, napari_viewer=None, parent=None, config_dir=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.config_dir = config_dir
        self._build_widgets()
        self._build_layout()
        self.backend.currentIndexChanged.connect(self._source_kind_changed)
        self.source_kind.currentIndexChanged.connect(self._source_kind_changed)
        self.llm.currentIndexChanged.connect(self._source_kind_changed)
        self.browse_button.clicked.connect(self._browse)
        self.apply_button.clicked.connect(self.apply)
        self.show_settings(get_engine().settings)

    def _build_widgets(self) -> None:
        self.backend = QComboBox()
        for label, kind in _BACKENDS:
            self.backend.addItem(label, kind)
        self.backend.setToolTip("Run the model in napari, or on a backend server (a GPU machine; docs/server.md)")
        self.server_url = QLineEdit()
        self.server_url.setPlaceholderText("http://127.0.0.1:8765 (through an SSH tunnel)")
        self.server_token = QLineEdit()
        self.server_token.setEchoMode(QLineEdit.EchoMode.Password)
        self.server_token.setPlaceholderText("the token the server was started with")
        self.source_kind = QComboBox()
        for label, kind in _SOURCES:
            self.source_kind.addItem(label, kind)
        self.source_path = QLineEdit()
        self.source_path.setPlaceholderText("folder with config.json, or owner/name")
        self.browse_button = QPushButton("Browse…")
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.dtype = QComboBox()
        self.dtype.addItems(DTYPES)
        self.max_new_tokens = QSpinBox()
        self.max_new_tokens.setRange(1, 4096)
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.0, 2.0)
        self.temperature.setSingleStep(0.1)
        self.temperature.setToolTip("0 = greedy: the same volume always gives the same text")
        self.closed_answer = QComboBox()
        self.closed_answer.addItem("rank the choices", "score")
        self.closed_answer.addItem("generate the letter", "generate")
        self.closed_answer.setToolTip(
            "Multiple-choice questions: rank A-D by the model's likelihood of each answer, or let the "
            "model write 'B. ...' itself (how the reference evaluates)"
        )
        self.llm = QComboBox()
        self.llm.addItem("here (transformers)", "transformers")
        self.llm.addItem("in vLLM (batching, GPUs)", "vllm")
        self.llm.setToolTip(
            "Where the language model generates: in this process, or in a vLLM server started on this "
            "machine's loopback for the model (or the one below); docs/vllm.md"
        )
        self.vllm_url = QLineEdit()
        self.vllm_url.setPlaceholderText("empty: start vLLM for the model")
        self.scope_warnings = QCheckBox("Warn when a scan is outside what the model knows")
        self.scope_warnings.setToolTip(
            "Show a warning above reports and answers for volumes unlike the model's training data "
            "(modality, slices, intensities, spacing, image features). Exports record the check either way."
        )
        self.apply_button = QPushButton("Apply and save")
        self.status = QLabel("")
        self.status.setWordWrap(True)

    def _build_layout(self) -> None:
        source_row = QHBoxLayout()
        source_row.addWidget(self.source_path, 1)
        source_row.addWidget(self.browse_button)
        form = QFormLayout()
        form.addRow("Backend", self.backend)
        form.addRow("Server", self.server_url)
        form.addRow("Token", self.server_token)
        form.addRow("Model source", self.source_kind)
        form.addRow("", source_row)
        form.addRow("Device", self.device)
        form.addRow("Dtype", self.dtype)
        form.addRow("Language model", self.llm)
        form.addRow("vLLM server", self.vllm_url)
        form.addRow("Max new tokens", self.max_new_tokens)
        form.addRow("Temperature", self.temperature)
        form.addRow("Closed questions", self.closed_answer)
        form.addRow("Scope", self.scope_warnings)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.apply_button)
        layout.addWidget(self.status)
        layout.addStretch(1)

    def show_settings(self, settings: InferenceSettings) -> None:
        source = settings.model_source
        if source == EMBEDDED:
            kind = "embedded"
        else:
            from napari_med3dvlm.model.sources import source_kind

            kind = source_kind(source)
        self.source_kind.setCurrentIndex([k for _, k in _SOURCES].index(kind))
        self.backend.setCurrentIndex(max(0, self.backend.findData(settings.backend)))
        self.server_url.setText(settings.server_url)
        self.server_token.setText(load_secret(SERVER_TOKEN, self.config_dir))
        self.source_path.setText("" if kind == "embedded" else source)
        self.device.setCurrentText(settings.device)
        self.dtype.setCurrentText(settings.dtype)
        self.max_new_tokens.setValue(settings.max_new_tokens)
        self.temperature.setValue(settings.temperature)
        self.closed_answer.setCurrentIndex(max(0, self.closed_answer.findData(settings.closed_answer)))
        self.scope_warnings.setChecked(settings.scope_warnings)
        self.llm.setCurrentIndex(max(0, self.llm.findData(settings.llm)))
        self.vllm_url.setText(settings.vllm_url)
        self._source_kind_changed()
        self._show_status()

    def settings(self) -> InferenceSettings:
        """The settings as currently entered (raises ValueError when invalid)."""
        kind = self.source_kind.currentData()
        source = EMBEDDED if kind == "embedded" else self.source_path.text().strip()
        if not source:
            raise ValueError("enter a model folder or hub id, or choose the embedded model")
        backend = self.backend.currentData()
        url = self.server_url.text().strip()
        if backend == "server" and not url.startswith(("http://", "https://")):
            raise ValueError("enter the server's address, e.g. http://127.0.0.1:8765")
        vllm_url = self.vllm_url.text().strip()
        if vllm_url and not vllm_url.startswith(("http://", "https://")):
            raise ValueError("enter the vLLM server's address, e.g. http://127.0.0.1:8000, or leave it empty")
        return get_engine().settings.updated(
            backend=backend,
            server_url=url,
            model_source=source,
            device=self.device.currentText(),
            dtype=self.dtype.currentText(),
            max_new_tokens=self.max_new_tokens.value(),
            temperature=round(self.temperature.value(), 3),
            closed_answer=self.closed_answer.currentData(),
            scope_warnings=self.scope_warnings.isChecked(),
            llm=self.llm.currentData(),
            vllm_url=vllm_url,
        )

    def apply(self) -> bool:
        """Hand the settings to the shared engine and save them; False (with a message) if invalid."""
        try:
            settings = self.settings()
        except ValueError as err:
            self.status.setText(f"Not saved: {err}")
            return False
        token = self.server_token.text().strip()
        save_secret(SERVER_TOKEN, token, self.config_dir)
        use_settings(settings, token=token if settings.backend == "server" else None)
        save_settings(settings, self.config_dir)
        self._show_status("Saved. ")
        return True

    def _show_status(self, prefix: str = "") -> None:
        engine = get_engine()
        if engine.settings.backend == "server":  # asking the server would block the Qt thread
            self.status.setText(f"{prefix}Backend server {engine.settings.server_url}: connects on first use.")
            return
        state = "loaded" if engine.is_loaded else "loads on first use"
        self.status.setText(f"{prefix}Model {engine.model_id}: {state}.")

    def _source_kind_changed(self, *_) -> None:
        kind = self.source_kind.currentData()
        remote = self.backend.currentData() == "server"
        self.server_url.setEnabled(remote)
        self.server_token.setEnabled(remote)
        self.source_kind.setEnabled(not remote)  # the server decides its model
        self.source_path.setEnabled(kind != "embedded" and not remote)
        self.browse_button.setEnabled(kind == "folder" and not remote)
        self.llm.setEnabled(not remote)
        self.vllm_url.setEnabled(not remote and self.llm.currentData() == "vllm")

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder")
        if folder:
            self.source_path.setText(folder)
