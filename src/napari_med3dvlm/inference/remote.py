"""`RemoteEngine`: the engine interface over HTTP, for a model served by `napari-med3dvlm serve`.

The docks and the command line hold an engine and never ask which kind: `InferenceEngine` runs the
model in this process, this class sends the same calls to a server (the model on a lab's GPU
machine). The report and chat tasks run here unchanged: they build their prompts with the shared
prompt builder and call `encode`, `stream` and `rank_choices`, which travel as

* ``encode``: the volume is uploaded once (content-hash id, `wire`), the server encodes it and
  keeps its features; the reply carries the preprocessing transform and the scope check;
* ``stream``: server-sent events, one per text piece; closing the stream (Stop, a closed iterator)
  ends generation on the server at its next token;
* ``rank_choices``, ``count_tokens``: small JSON calls.

A server that restarted has forgotten its volumes; the next call uploads again by itself. Every
failure becomes a `ServerError` (a `ModelUnavailableError`) with one sentence naming the server and
what to do; the token is sent as a bearer header and never appears in a message or a log line.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Iterator

import httpx

from napari_med3dvlm.backend_client import READ_TIMEOUT_S, ServerClient, UnknownVolume
from napari_med3dvlm.errors import ServerError
from napari_med3dvlm.io import Volume
from napari_med3dvlm.settings import InferenceSettings

from .features import EncodedImage, volume_signature
from . import wire

logger = logging.getLogger(__name__)

#: Generation settings that travel with each request (the model-choice settings stay on the server).
GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "seed")


class RemoteEngine:
    """An engine whose model runs on a `napari-med3dvlm serve` server (see the module docstring)."""

    def __init__(self, url: str, token: str = "", settings: InferenceSettings | None = None,
                 timeout: float = READ_TIMEOUT_S, transport: httpx.BaseTransport | None = None):
        self._server = ServerClient(url, token, timeout, transport)
        self.url = self._server.url
        self._settings = settings or InferenceSettings()
        self._info: dict | None = None
        self._ids: dict[str, str] = {}  # local volume signature -> server volume id
        self._volumes: dict[str, Volume] = {}  # signature -> volume, to upload again after a restart
        self._scopes: dict[str, dict] = {}
        self._lock = threading.Lock()

    # -- what the docks and tasks read ------------------------------------------------------------

    @property
    def settings(self) -> InferenceSettings:
        return self._settings

    def update_settings(self, settings: InferenceSettings) -> None:
        self._settings = settings

    @property
    def info(self) -> dict:
        """The server's model facts (id, input size, device, dtype, ...), asked once."""
        if self._info is None:
            self._info = self._server.json("GET", "/v1/model")
        return self._info

    @property
    def model_id(self) -> str:
        return self.info["model_id"]

    @property
    def is_loaded(self) -> bool:
        return self._info is not None

    def load(self):
        """Ask the server to have its model ready; there is no local (model, tokenizer) pair."""
        self.info  # noqa: B018 - a request that loads the model on the server
        return None, None

    def unload(self) -> None:
        with self._lock:
            self._info = None
            self._ids.clear()
            self._volumes.clear()
            self._scopes.clear()

    def close(self) -> None:
        self._server.close()

    @property
    def client(self) -> ServerClient:
        """The HTTP client of this server (retrieval's search uses it too)."""
        return self._server

    @property
    def runtime(self) -> dict:
        return {"device": self.info["device"], "dtype": self.info["dtype"], "server": self.url}

    @property
    def proj_out_num(self) -> int:
        return int(self.info["proj_out_num"])

    @property
    def image_size(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.info["image_size"])

    @property
    def context_length(self) -> int:
        return int(self.info["context_length"])

    def signature(self, volume: Volume) -> str:
        return volume_signature(volume.data, volume.window, model_id=f"{self.url}|{self.model_id}",
                                modality=f"{volume.modality}|{volume.plane}")

    # -- volumes ----------------------------------------------------------------------------------

    def encode(self, volume: Volume) -> EncodedImage:
        """Upload the volume unless the server has it, have it encoded there, and return the
        transform (``features`` stays on the server: None here)."""
        from napari_med3dvlm.io.preprocess import PreprocessTransform

        key = self.signature(volume)
        for attempt in range(2):
            volume_id = self._ensure_uploaded(key, volume)
            try:
                reply = self._server.json("POST", f"/v1/volumes/{volume_id}/encode", unknown_volume=True)
                break
            except UnknownVolume:
                self._forget(key)
                if attempt:
                    raise ServerError(f"The server at {self.url} lost the volume twice; try again") from None
        self._scopes[key] = reply.get("scope") or {}
        values = reply["transform"]
        transform = PreprocessTransform(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
        return EncodedImage(features=None, transform=transform, signature=key)

    def _ensure_uploaded(self, key: str, volume: Volume) -> str:
        with self._lock:
            known = self._ids.get(key)
        if known is not None:
            return known
        body = wire.nifti_bytes(volume)
        params = wire.volume_params(volume)
        volume_id = wire.content_id(body, params)
        exists = self._server.request("HEAD", f"/v1/volumes/{volume_id}", ok=(200, 404)).status_code == 200
        if not exists:
            reply = self._server.request("POST", "/v1/volumes", params=params, content=body,
                                  headers={"Content-Type": wire.NIFTI_GZ}).json()
            volume_id = reply["volume_id"]
        with self._lock:
            self._ids[key] = volume_id
            self._volumes[key] = volume
        return volume_id

    def _forget(self, key: str) -> None:
        with self._lock:
            self._ids.pop(key, None)

    def _volume_id(self, encoded: EncodedImage) -> str:
        volume_id = self._ids.get(encoded.signature)
        if volume_id is None:
            volume = self._volumes.get(encoded.signature)
            if volume is None:
                raise ServerError("This volume was not sent to the server; encode it first")
            volume_id = self._ensure_uploaded(encoded.signature, volume)
        return volume_id

    def check_scope(self, volume: Volume, encoded: EncodedImage | None = None):
        """The server's scope check for this volume (run when it was encoded)."""
        key = self.signature(volume)
        if key not in self._scopes:
            self.encode(volume)
        return wire.scope_from_wire(self._scopes[key])

    # -- text -------------------------------------------------------------------------------------

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one engine per process; chat re-counts turns
    def count_tokens(self, text: str) -> int:
        return int(self._server.json("POST", "/v1/tokens", json={"text": text})["count"])

    def stream(self, prompt: str, image_features: EncodedImage, settings: InferenceSettings | None = None,
               cancel_event: threading.Event | None = None) -> Iterator[str]:
        """Yield text pieces from the server; setting ``cancel_event`` (or closing the iterator)
        closes the stream, which stops generation on the server."""
        settings = settings or self._settings
        cancel_event = cancel_event or threading.Event()
        generation = {k: getattr(settings, k) for k in GENERATION_KEYS}
        for attempt in range(2):
            body = {"volume_id": self._volume_id(image_features), "prompt": prompt, "settings": generation}
            try:
                yield from self._stream_events(body, cancel_event)
                return
            except UnknownVolume:
                self._forget(image_features.signature)
                if attempt:
                    raise ServerError(f"The server at {self.url} lost the volume twice; try again") from None

    def _stream_events(self, body: dict, cancel_event: threading.Event) -> Iterator[str]:
        from httpx_sse import SSEError, connect_sse

        finished = False
        started = False
        try:
            with connect_sse(self._server.http, "POST", "/v1/generate", json=body) as source:
                response = source.response
                if response.status_code != 200:
                    response.read()
                    self._server.raise_for(response, unknown_volume=True)
                for event in source.iter_sse():
                    if event.event == "token":
                        started = True
                        yield json.loads(event.data)["text"]
                    elif event.event == "done":
                        finished = True
                        break
                    elif event.event == "error":
                        raise ServerError(f"The server at {self.url} failed: {json.loads(event.data)['message']}")
                    if cancel_event.is_set():
                        return  # leaving the block closes the connection: the server stops
        except (httpx.TransportError, SSEError) as err:
            raise self._server.transport_error(err, during="streaming" if started else "") from err
        if not finished and not cancel_event.is_set():
            raise ServerError(f"The server at {self.url} closed the stream before the end; the text so far is kept")

    def rank_choices(self, prompt: str, choices, image_features: EncodedImage) -> list[float]:
        for attempt in range(2):
            body = {"volume_id": self._volume_id(image_features), "prompt": prompt, "choices": list(choices)}
            try:
                return [float(s) for s in self._server.json("POST", "/v1/rank", json=body, unknown_volume=True)["scores"]]
            except UnknownVolume:
                self._forget(image_features.signature)
                if attempt:
                    raise ServerError(f"The server at {self.url} lost the volume twice; try again") from None
        raise AssertionError("unreachable")

    def explain(self, volume: Volume, target, method: str = "combined", cancel_event: threading.Event | None = None):
        """The server's relevance map for ``target`` (a `relevance.SpanTarget`), mapped with this
        volume's transform; None when cancelled before the answer came."""
        import base64

        import numpy as np

        from .relevance import RelevanceMap

        encoded = self.encode(volume)
        body = {"prompt": target.prompt, "continuation": target.continuation, "start": target.start,
                "end": target.end, "label": target.label, "method": method}
        reply = self._server.json("POST", f"/v1/volumes/{self._volume_id(encoded)}/explain", json=body)
        if cancel_event is not None and cancel_event.is_set():
            return None
        model_map = np.frombuffer(base64.b64decode(reply["map"]), dtype=np.float32).reshape(reply["shape"])
        return RelevanceMap(model_map=model_map.copy(), transform=encoded.transform, label=reply["label"],
                            span=reply["span"], method=reply["method"], log_likelihood=reply["log_likelihood"],
                            n_tokens=reply["n_tokens"], duration_s=reply["duration_s"])

    def generate(self, prompt, image_features, settings=None, cancel_event=None) -> str:
        return "".join(self.stream(prompt, image_features, settings, cancel_event))
