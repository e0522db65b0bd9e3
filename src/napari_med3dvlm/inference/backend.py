"""Which engine the docks and the command line hold: the model in this process (`InferenceEngine`)
or on a backend server (`RemoteEngine`). The settings' ``backend`` decides, here and nowhere else.
"""

from __future__ import annotations

import os
import threading

from napari_med3dvlm.settings import SERVER_TOKEN, TOKEN_ENV, InferenceSettings, load_secret, load_settings

from .engine import InferenceEngine
from .remote import RemoteEngine

_engine: InferenceEngine | RemoteEngine | None = None
_engine_lock = threading.Lock()


def server_token(given: str | None = None) -> str:
    """The token to send: the one given, else the environment's, else the stored secret."""
    if given:
        return given
    return os.environ.get(TOKEN_ENV) or load_secret(SERVER_TOKEN)


def engine_for(settings: InferenceSettings, token: str | None = None):
    """A new engine of the kind ``settings.backend`` names."""
    if settings.backend == "server":
        return RemoteEngine(settings.server_url, server_token(token), settings)
    return InferenceEngine(settings)


def _same_backend(engine, settings: InferenceSettings) -> bool:
    if isinstance(engine, RemoteEngine):
        return settings.backend == "server" and engine.url == settings.server_url.rstrip("/")
    return settings.backend == "local"


def get_engine():
    """The process-wide engine (created from the saved settings on first call)."""
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = engine_for(load_settings())
        return _engine


def set_engine(engine):
    """Replace the shared engine (tests, embedding apps); returns the previous one."""
    global _engine
    with _engine_lock:
        previous, _engine = _engine, engine
        return previous


def use_settings(settings: InferenceSettings, token: str | None = None):
    """Apply ``settings`` to the shared engine: the same engine takes them when the backend stays,
    a new one replaces it when the backend (or the server) changes. Returns the engine."""
    global _engine
    with _engine_lock:
        engine = _engine
        if engine is not None and _same_backend(engine, settings) and token is None:
            engine.update_settings(settings)
            return engine
        if engine is not None:
            engine.unload()
        _engine = engine_for(settings, token)
        return _engine
