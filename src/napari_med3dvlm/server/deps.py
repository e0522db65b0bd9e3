"""What every route of the server shares: the limits, the refusal format, the bearer check, and the
app's state (engine, volume store, limits, token) reached through the request, so that each area's
routes live in their own module without closures over `create_app`."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Path as PathParam, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from napari_med3dvlm.inference import wire
from napari_med3dvlm.inference.engine import InferenceEngine
from napari_med3dvlm.model import prompts

from .store import VolumeStore

VolumeId = Annotated[str, PathParam(pattern=wire.VOLUME_ID.pattern, description="32 hex digits (content hash)")]


@dataclass
class Limits:
    """What one request may cost the server."""

    max_upload_bytes: int = 2 << 30
    #: Seconds without a byte arriving before an upload is abandoned (408).
    upload_idle_s: float = 30.0
    max_new_tokens: int = 1024
    max_prompt_chars: int = 64_000
    max_choices: int = 8
    max_search_k: int = 100


def fail(status: int, message: str, code: str | None = None):
    """Refuse the request: JSON ``{"detail": message}``, or ``{"detail": {"message", "code"}}`` when a
    client must tell this refusal from others by code."""
    raise HTTPException(status, detail={"message": message, "code": code} if code else message)


_bearer = HTTPBearer(auto_error=False)


def authorize(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    """The bearer token, compared in constant time; the app's token '' means no authentication."""
    token = request.app.state.token
    if not token:
        return
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(401, "missing or wrong token (send 'Authorization: Bearer TOKEN')",
                            headers={"WWW-Authenticate": "Bearer"})


#: The dependency list every route carries.
AUTH = [Depends(authorize)]


def _engine(request: Request) -> InferenceEngine:
    return request.app.state.engine


def _store(request: Request) -> VolumeStore:
    return request.app.state.store


def _limits(request: Request) -> Limits:
    return request.app.state.limits


Engine = Annotated[InferenceEngine, Depends(_engine)]
Store = Annotated[VolumeStore, Depends(_store)]
Limited = Annotated[Limits, Depends(_limits)]


def volume_or_404(store: VolumeStore, volume_id: str):
    """The stored volume, or 404 with code ``unknown_volume`` (the client re-uploads after a restart)."""
    volume = store.get(volume_id)
    if volume is None:
        fail(404, f"no volume {volume_id} on this server (it restarted or dropped it); upload it again",
             code="unknown_volume")
    return volume


def check_text_size(text: str, limits: Limits, what: str = "text") -> None:
    if len(text) > limits.max_prompt_chars:
        fail(413, f"{what} of {len(text)} characters is over the limit of {limits.max_prompt_chars}")


def checked_prompt(prompt: str, engine: InferenceEngine, limits: Limits) -> None:
    """Size first (cheap), then the image placeholders the model's splice needs."""
    check_text_size(prompt, limits, "prompt")
    count = engine.proj_out_num
    if not prompt.startswith(prompts.image_prefix(count)):
        fail(422, f"the prompt must start with the image placeholders: {count} x '{prompts.IMAGE_TOKEN}' "
             "(GET /v1/model gives the count)")
