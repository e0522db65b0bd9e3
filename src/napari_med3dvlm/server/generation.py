"""``/v1/tokens``, ``/v1/generate`` and ``/v1/rank``: prompts built by the client with the shared
prompt builder, answered by the one engine; generation streams server-sent events from a worker
thread and stops at the next token when the client goes away."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field

from napari_med3dvlm.inference import wire

from .deps import AUTH, Engine, Limited, Store, check_text_size, checked_prompt, fail, volume_or_404

logger = logging.getLogger(__name__)

router = APIRouter()


class GenerationSettings(BaseModel):
    """Sampling for one request; what is left out comes from the server's settings."""

    max_new_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None


class GenerateRequest(BaseModel):
    volume_id: str = Field(pattern=wire.VOLUME_ID.pattern)
    prompt: str = Field(min_length=1)
    settings: GenerationSettings = GenerationSettings()


class RankRequest(BaseModel):
    volume_id: str = Field(pattern=wire.VOLUME_ID.pattern)
    prompt: str = Field(min_length=1)
    choices: list[Annotated[str, Field(min_length=1, max_length=500)]] = Field(min_length=2)


class TextRequest(BaseModel):
    text: str


@router.post("/v1/tokens", dependencies=AUTH)
def count_tokens(body: TextRequest, engine: Engine, limits: Limited):
    check_text_size(body.text, limits)
    return {"count": engine.count_tokens(body.text)}


def prepare_generation(body: GenerateRequest, engine: Engine, store: Store, limits: Limited):
    """Checks that must answer with a status code, before the event stream starts."""
    checked_prompt(body.prompt, engine, limits)
    if (body.settings.max_new_tokens or 0) > limits.max_new_tokens:
        fail(422, f"max_new_tokens {body.settings.max_new_tokens} is over this server's limit of "
             f"{limits.max_new_tokens}")
    return body, volume_or_404(store, body.volume_id)


@router.post("/v1/generate", response_class=EventSourceResponse, dependencies=AUTH)
async def generate(engine: Engine, prepared: tuple = Depends(prepare_generation)):
    """Text pieces as `token` events, then `done`; an `error` event if the model fails midway.
    A client that disconnects stops generation at the next token."""
    body, volume = prepared
    settings = engine.settings.updated(**body.settings.model_dump(exclude_none=True))
    cancel = threading.Event()

    def pieces():
        return engine.stream(body.prompt, engine.encode(volume), settings, cancel)

    try:
        async for kind, value in _pump(pieces, cancel):
            if kind == "piece":
                yield ServerSentEvent(event="token", data={"text": value})
            else:
                logger.warning("generation failed: %s", type(value).__name__)
                yield ServerSentEvent(event="error", data={"message": str(value)})
                return
        yield ServerSentEvent(event="done", data={"stopped": False})
    finally:
        cancel.set()  # the client went away, or we are done: stop at the next token


@router.post("/v1/rank", dependencies=AUTH)
def rank(body: RankRequest, engine: Engine, store: Store, limits: Limited):
    checked_prompt(body.prompt, engine, limits)
    if len(body.choices) > limits.max_choices:
        fail(422, f"{len(body.choices)} choices are over the limit of {limits.max_choices}")
    volume = volume_or_404(store, body.volume_id)
    scores = engine.rank_choices(body.prompt, body.choices, engine.encode(volume))
    return {"scores": scores}


async def _pump(start, cancel: threading.Event):
    """Run a blocking piece generator in a thread and yield ("piece", text) / ("error", exc) here."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    def run():
        try:
            for piece in start():
                loop.call_soon_threadsafe(queue.put_nowait, ("piece", piece))
                if cancel.is_set():
                    break
        except Exception as err:  # noqa: BLE001 - reported to the client as an error event
            loop.call_soon_threadsafe(queue.put_nowait, ("error", err))
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, done)

    worker = threading.Thread(target=run, name="med3dvlm-serve-generate", daemon=True)
    worker.start()
    while True:
        item = await queue.get()
        if item is done:
            return
        yield item
