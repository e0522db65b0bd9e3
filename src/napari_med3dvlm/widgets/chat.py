"""The Chat dock: ask questions about an image layer, open-ended or multiple choice, with the
conversation kept per layer so switching layers switches conversations. For a layer read from DICOM,
the conversation leaves as a DICOM SR (a file, or stored in the study on the PACS it came from)."""

from __future__ import annotations

import html
from pathlib import Path

from qtpy.QtGui import QTextCharFormat
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from napari_med3dvlm.inference import Conversation, get_engine
from napari_med3dvlm.model.prompts import CHOICE_LETTERS

from ._common import BusyIndicator, LayerPicker, ScopeBanner, StreamRunner, layer_key, volume_input
from ._relevance import WhereRunner

_USER_COLOR = "#7fb4ff"
_MODEL_COLOR = "#9be39b"


class ChatWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.conversations: dict[str, Conversation] = {}
        self.scope_results: dict[str, object] = {}  # the last scope check of each layer
        self.model_ids: dict[str, str] = {}  # the model that answered each layer's last question (for the SR)
        self._answer_started = False
        self._pending_question = ""
        self.runner = StreamRunner(self)
        self._build_widgets(napari_viewer)
        self._build_layout()
        self._connect(napari_viewer)
        self._running_changed(False)

    def _build_widgets(self, napari_viewer) -> None:
        self.layer_picker = LayerPicker(napari_viewer, self)
        self.scope_banner = ScopeBanner(self)  # "outside what this model knows", above the answers
        self.scope_banner.checked.connect(self._scope_checked)
        self.view = QTextBrowser()
        self.view.setPlaceholderText("Ask a question about the selected layer.")
        self.input = QLineEdit()
        self.input.setPlaceholderText("Question (Enter sends)")
        self.send_button = QPushButton("Send")
        self.stop_button = QPushButton("Stop")
        self.clear_button = QPushButton("Clear")
        self.where_button = QPushButton("Show where")  # relevance map of the selected (or last) answer
        self.export_sr_button = QPushButton("Export SR…")
        self.export_sr_button.setToolTip("Save the questions and answers as a DICOM Structured Report (DICOM layers only)")
        self.pacs_button = QPushButton("Send to PACS")
        self.pacs_button.setToolTip("Store the questions and answers as a DICOM SR in the study on the PACS the "
                                    "series came from")
        self.send_worker = None
        self.closed_mode = QCheckBox("Multiple choice (A–D)")
        self.closed_mode.setToolTip("Ask a closed question: the model answers with one of the choices")
        self.choice_inputs = [QLineEdit() for _ in CHOICE_LETTERS]
        self.choices_box = QWidget()
        form = QFormLayout(self.choices_box)
        form.setContentsMargins(0, 0, 0, 0)
        for letter, edit in zip(CHOICE_LETTERS, self.choice_inputs):
            edit.returnPressed.connect(self.send)
            form.addRow(f"{letter}.", edit)
        self.choices_box.setVisible(False)
        self.status = BusyIndicator()

    def _build_layout(self) -> None:
        row = QHBoxLayout()
        row.addWidget(QLabel("Layer"))
        row.addWidget(self.layer_picker, 1)
        ask_row = QHBoxLayout()
        ask_row.addWidget(self.input, 1)
        ask_row.addWidget(self.send_button)
        buttons = QHBoxLayout()
        buttons.addWidget(self.closed_mode, 1)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.clear_button)
        buttons.addWidget(self.where_button)
        sr_buttons = QHBoxLayout()
        sr_buttons.addStretch(1)
        sr_buttons.addWidget(self.export_sr_button)
        sr_buttons.addWidget(self.pacs_button)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.scope_banner)
        layout.addWidget(self.view, 1)
        layout.addLayout(ask_row)
        layout.addWidget(self.choices_box)
        layout.addLayout(buttons)
        layout.addLayout(sr_buttons)
        layout.addWidget(self.status)

    def _connect(self, napari_viewer) -> None:
        self.input.returnPressed.connect(self.send)
        self.send_button.clicked.connect(self.send)
        self.stop_button.clicked.connect(self.runner.stop)
        self.clear_button.clicked.connect(self.clear)
        self.where = WhereRunner(napari_viewer, self.where_button, self.status, self)
        self.where_button.clicked.connect(self.show_where)
        self.export_sr_button.clicked.connect(self._export_sr_dialog)
        self.pacs_button.clicked.connect(self.send_to_pacs)
        self.closed_mode.toggled.connect(self.choices_box.setVisible)
        self.layer_picker.layer_changed.connect(lambda _: self._render())
        self.runner.piece.connect(self._append)
        napari_viewer.layers.events.removed.connect(lambda event: self.conversations.pop(layer_key(event.value), None))
        napari_viewer.layers.events.removed.connect(lambda event: self.scope_results.pop(layer_key(event.value), None))
        self.runner.done.connect(self._done)
        self.runner.failed.connect(self._failed)
        self.runner.running_changed.connect(self._running_changed)

    def conversation(self, layer=None) -> Conversation | None:
        layer = layer or self.layer_picker.layer()
        if layer is None:
            return None
        return self.conversations.setdefault(layer_key(layer), Conversation())

    def choices(self) -> tuple[str, ...] | None:
        if not self.closed_mode.isChecked():
            return None
        return tuple(edit.text().strip() for edit in self.choice_inputs)

    def send(self, question: str | None = None) -> bool:
        """Ask ``question`` (default: the input box) about the selected layer; False if not sent."""
        question = (question if isinstance(question, str) else self.input.text()).strip()
        layer = self.layer_picker.layer()
        if not question or layer is None or self.runner.running:
            return False
        choices = self.choices()
        if choices is not None and not all(choices):
            self.status.idle("Fill in all four choices, or untick multiple choice.")
            return False
        conversation = self.conversation(layer)
        self._pending_question = question
        self.input.clear()
        self._append_message("You", question, _USER_COLOR, choices)
        self._start_model_message()
        self.status.busy("Thinking…")
        self._scope_target = layer_key(layer)
        engine = get_engine()
        self.model_ids[layer_key(layer)] = engine.model_id
        self.runner.start(
            conversation.stream_answer, engine, volume_input(layer), question, choices,
            on_scope=self.scope_banner.report,
        )
        return True

    def stop(self) -> None:
        self.runner.stop()

    def clear(self) -> None:
        conversation = self.conversation()
        if conversation is not None and not self.runner.running:
            conversation.clear()
            self._render()

    # -- view -------------------------------------------------------------------------------------

    def _scope_checked(self, result) -> None:
        self.scope_results[self._scope_target] = result

    def _render(self) -> None:
        self.view.clear()
        layer = self.layer_picker.layer()
        self.scope_banner.show_result(None if layer is None else self.scope_results.get(layer_key(layer)))
        conversation = self.conversation()
        for turn in conversation.turns if conversation else []:
            self._append_message("You", turn.question, _USER_COLOR, turn.choices)
            self._append_message("Model", turn.answer, _MODEL_COLOR)
        self._update_sr_buttons()

    def _append_message(self, who: str, text: str, color: str, choices=None) -> None:
        body = html.escape(text)
        if choices:
            listed = " ".join(f"<b>{l}.</b> {html.escape(c)}" for l, c in zip(CHOICE_LETTERS, choices))
            body += f"<br><span style='color:#b0b0b0'>{listed}</span>"
        self.view.append(f"<p><b style='color:{color}'>{who}:</b> {body}</p>")

    def _start_model_message(self) -> None:
        self.view.append(f"<p><b style='color:{_MODEL_COLOR}'>Model:</b> </p>")
        self._answer_started = False

    def _append(self, piece: str) -> None:
        if not self._answer_started:
            piece = piece.lstrip()
            if not piece:
                return
            self._answer_started = True
            self.status.busy("Answering…")
        cursor = self.view.textCursor()
        cursor.movePosition(cursor.MoveOperation.End)
        cursor.insertText(piece, QTextCharFormat())
        self.view.ensureCursorVisible()

    def _done(self, answer) -> None:
        self.status.idle("")
        self._render()  # the stored turns, tidied (stripped answers)

    def _failed(self, message: str) -> None:
        self.status.idle(f"Error: {message}")
        if not self.input.text():
            self.input.setText(self._pending_question)  # nothing typed is lost
        self._render()

    def transcript(self) -> str:
        return self.view.toPlainText()

    def _running_changed(self, running: bool) -> None:
        self.send_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.clear_button.setEnabled(not running)
        self.layer_picker.setEnabled(not running)
        self._update_sr_buttons()

    # -- the conversation as a DICOM SR -----------------------------------------------------------------

    def dicom_source(self):
        """The `io.DicomSource` of the selected layer (None unless it was read from DICOM)."""
        from napari_med3dvlm.io import layer_dicom_source

        layer = self.layer_picker.layer()
        return None if layer is None else layer_dicom_source(layer.metadata)

    def _questions(self) -> list[tuple[str, str]]:
        from napari_med3dvlm.inference.dicom_sr import chat_questions

        conversation = self.conversation()
        return chat_questions(conversation.turns) if conversation else []

    def chat_sr(self):
        """The selected layer's questions and answers (closed ones with their choices) as a DICOM SR
        dataset (`inference.dicom_sr`), in the layer's study."""
        from napari_med3dvlm.inference.dicom_sr import build_report_sr

        questions = self._questions()
        if not questions:
            raise RuntimeError("there is no answered question to export")
        layer = self.layer_picker.layer()
        model_id = self.model_ids.get(layer_key(layer)) or get_engine().model_id
        return build_report_sr(self.dicom_source(), None, model_id=model_id, questions=questions)

    def export_sr(self, path) -> Path:
        """Write the conversation as a DICOM SR file at ``path``."""
        from napari_med3dvlm.inference.dicom_sr import write_sr

        return write_sr(self.chat_sr(), path)

    def _export_sr_dialog(self) -> None:
        from ._pacs import export_sr_dialog

        export_sr_dialog(self, self.export_sr, "chat.dcm")

    def send_to_pacs(self):
        """Store the conversation as a DICOM SR on the server the layer came from (STOW-RS, in a
        worker); returns the worker."""
        from ._pacs import send_sr

        source = self.dicom_source()
        if not self._questions() or source is None or not source.server or self.send_worker is not None:
            return None
        if self.runner.running:
            return None
        return send_sr(self, self.chat_sr, source.server, "conversation", self._update_sr_buttons)

    def _update_sr_buttons(self) -> None:
        running = self.runner.running
        source = self.dicom_source()
        answered = not running and bool(self._questions())
        self.export_sr_button.setEnabled(answered and source is not None)
        self.pacs_button.setEnabled(answered and bool(source and source.server) and self.send_worker is None)

    def selected_answer(self) -> tuple[int, int, int] | None:
        """(turn, start, end): the answer text selected in the view, else the last answer, whole."""
        conversation = self.conversation()
        turns = conversation.turns if conversation else []
        selected = self.view.textCursor().selectedText().replace("\u2029", " ").strip()
        answered = [i for i, turn in enumerate(turns) if turn.answer.strip()]
        for i in reversed(answered):
            at = turns[i].answer.strip().find(selected) if selected else -1
            if at >= 0:
                return i, at, at + len(selected)
        return (answered[-1], 0, len(turns[answered[-1]].answer.strip())) if answered else None

    def show_where(self) -> None:
        """Map where the model looked for the selected answer; while it runs, the button cancels."""
        from napari_med3dvlm.inference.relevance import answer_target, choice_target

        if self.where.running:
            self.where.cancel()
            return
        layer, picked = self.layer_picker.layer(), self.selected_answer()
        if layer is None or picked is None or self.runner.running:
            return
        index, start, end = picked
        turns = list(self.conversation(layer).turns)
        turn, history = turns[index], turns[:index]
        answer = turn.answer.strip()

        def target(engine):
            context = dict(count_tokens=engine.count_tokens, max_tokens=engine.context_length,
                           reserve=engine.settings.max_new_tokens)
            if turn.choices and engine.settings.closed_answer == "score" and answer[:1] in CHOICE_LETTERS:
                choice = turn.choices[CHOICE_LETTERS.index(answer[0])]  # the choice as it was ranked
                return choice_target(engine.proj_out_num, history, turn.question, choice, **context)
            return answer_target(engine.proj_out_num, history, turn.question, answer, turn.choices, start, end,
                                 **context)

        self.where.start(layer, target)

    def closeEvent(self, event) -> None:
        self.runner.stop()
        self.where.cancel()
        super().closeEvent(event)
