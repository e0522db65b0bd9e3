"""Reports and conversations about one volume, as streaming generators.

Each task yields text pieces and *returns* its result, which maps directly onto napari's generator
workers (``yielded`` for tokens, ``returned`` for the result) and onto a CLI loop that prints as it
goes. The docks and the command line share these, so they produce the same text for the same input.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

from napari_med3dvlm.io import Volume
from napari_med3dvlm.model import prompts
from napari_med3dvlm.settings import InferenceSettings

from .engine import InferenceEngine
from .export import ReportRecord, VolumeInfo

logger = logging.getLogger(__name__)


def stream_report(
    engine: InferenceEngine,
    volume: Volume,
    settings: InferenceSettings | None = None,
    cancel_event: threading.Event | None = None,
    template: str | None = None,
    on_scope: Callable | None = None,
) -> Generator[str, None, ReportRecord]:
    """Yield the report as it is generated; return the full record (partial if stopped).

    ``on_scope(ScopeResult)`` is called before generation starts with what is unusual about the
    volume for this model (`scope`); the report is generated either way and the record keeps it.
    """
    settings = settings or engine.settings
    cancel_event = cancel_event or threading.Event()
    started = time.time()
    encoded = _encode(engine, volume, on_scope)
    scope = check_scope(engine, volume, encoded, on_scope)
    request = prompts.report_text(template)
    prompt = prompts.image_prefix(engine.proj_out_num) + request
    pieces = []
    for piece in engine.stream(prompt, encoded, settings, cancel_event):
        pieces.append(piece)
        yield piece
    return ReportRecord(
        text="".join(pieces).strip(),
        request=request,
        model_id=engine.model_id,
        settings={**settings.to_dict(), **engine.runtime},
        preprocessing=encoded.transform.to_dict(),
        volume=VolumeInfo.of(volume, encoded.signature),
        started=started,
        duration_s=time.time() - started,
        stopped=cancel_event.is_set(),
        scope=None if scope is None else scope.to_dict(),
    )


def _encode(engine: InferenceEngine, volume: Volume, on_scope: Callable | None):
    """The engine's features; a volume the model cannot read (one slice) still gets its reasons."""
    try:
        return engine.encode(volume)
    except ValueError:
        check_scope(engine, volume, None, on_scope)
        raise


def check_scope(engine: InferenceEngine, volume: Volume, encoded=None, on_scope: Callable | None = None):
    """`scope.check_input`, never failing the task it belongs to (a failed check is logged)."""
    try:
        result = engine.check_scope(volume, encoded)
    except Exception:  # noqa: BLE001 - the check informs; it must not stop a report
        logger.exception("scope check failed")
        return None
    if on_scope is not None:
        on_scope(result)
    return result


@dataclass
class Conversation:
    """A multi-turn question-and-answer session about one volume."""

    turns: list[prompts.Turn] = field(default_factory=list)

    def clear(self) -> None:
        self.turns.clear()

    def prompt(self, engine: InferenceEngine, question: str, choices: Sequence[str] | None = None) -> str:
        text, _ = prompts.chat_prompt(
            engine.proj_out_num,
            self.turns,
            question,
            choices,
            count_tokens=engine.count_tokens,
            max_tokens=engine.context_length,
            reserve=engine.settings.max_new_tokens,
        )
        return text

    def stream_answer(
        self,
        engine: InferenceEngine,
        volume: Volume,
        question: str,
        choices: Sequence[str] | None = None,
        settings: InferenceSettings | None = None,
        cancel_event: threading.Event | None = None,
        on_scope: Callable | None = None,
    ) -> Generator[str, None, str]:
        """Yield the answer as it is generated; the turn (even a stopped one) joins the history.

        ``on_scope(ScopeResult)`` is called once the volume is encoded, before the answer starts."""
        question = question.strip()
        if not question:
            raise ValueError("the question is empty")
        choices = tuple(c.strip() for c in choices) if choices else None
        encoded = _encode(engine, volume, on_scope)
        if on_scope is not None:
            check_scope(engine, volume, encoded, on_scope)
        if choices and (settings or engine.settings).closed_answer == "score":
            scores = engine.rank_choices(self.prompt(engine, question, None), choices, encoded)
            best = max(range(len(choices)), key=scores.__getitem__)
            answer = prompts.closed_answer_text(prompts.CHOICE_LETTERS[best], choices[best])
            self.turns.append(prompts.Turn(question, answer, choices))
            yield answer
            return answer
        prompt = self.prompt(engine, question, choices)
        pieces = []
        try:
            for piece in engine.stream(prompt, encoded, settings, cancel_event):
                pieces.append(piece)
                yield piece
        finally:
            self.turns.append(prompts.Turn(question, "".join(pieces).strip(), choices))
        return self.turns[-1].answer
