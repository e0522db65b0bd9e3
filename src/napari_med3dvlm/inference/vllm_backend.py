"""Generation through vLLM: the vision encoder and projector stay in this process, the language model
runs in a vLLM server that this module starts, watches and stops (docs/vllm.md).

vLLM needs no Med3DVLM model class: it accepts ``prompt_embeds``, a (sequence, hidden) tensor that
stands for the prompt's token embeddings. We send exactly the ``inputs_embeds`` that the in-process
``generate`` starts from (`Med3DVLMForCausalLM.prepare_inputs_embeds`: the text embeddings with the
image embeddings written over the first positions), so greedy decoding gives the same tokens. vLLM
then batches concurrent requests (continuous batching), which is what a batch report over an archive
needs, and can run the language model over several GPUs.

Three parts:

- `VLLMProcess` runs ``python -m vllm.entrypoints.openai.api_server`` from vLLM's own environment
  (``.venv-vllm``, made by ``scripts/setup-vllm.sh``) on a free loopback port, waits until it answers,
  restarts it when asked and stops it on exit. It is never bound to another interface: vLLM's
  prompt-embeds input has had memory-exhaustion CVEs, so nothing from a client reaches it except
  through our code.
- `VLLMClient` streams one completion (token ids, cancellable between tokens) or runs many at once.
  It only ever *sends* tensors (``torch.save``); nothing received is unpickled.
- `stream_vllm` is the engine's ``stream`` for ``Settings > llm = 'vllm'``: the same text pieces as the
  in-process streamer, because the token ids go through the same ``TextIteratorStreamer`` here.

Ranking closed-question choices stays in-process (`InferenceEngine.rank_choices`): vLLM's
prompt log-probabilities are not offered for prompt embeddings, and the engine holds the language
model anyway to build the embeddings.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

#: The environment ``scripts/setup-vllm.sh`` creates, at the root of the checkout.
VENV_DIR = ".venv-vllm"
#: Overrides the Python that runs vLLM (a vLLM installed elsewhere).
PYTHON_ENV = "NAPARI_MED3DVLM_VLLM_PYTHON"
#: The name our requests use for the one model a managed server holds.
SERVED_NAME = "med3dvlm-lm"
#: Seconds to wait for a server to answer after start (loading a 7B model from disk can take minutes).
STARTUP_TIMEOUT_S = 600.0
DEFAULT_KV_CACHE_GIB = 1  # CPU only (VLLM_CPU_KVCACHE_SPACE): ~20k tokens of SmolLM2-135M


class VLLMError(RuntimeError):
    """vLLM is not installed, did not start, stopped, or refused a request; the message says what to do."""


# ------------------------------------------------------------------------------------------ setup
def repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def vllm_python() -> Path | None:
    """The Python of vLLM's environment: $NAPARI_MED3DVLM_VLLM_PYTHON, else the checkout's .venv-vllm."""
    override = os.environ.get(PYTHON_ENV, "").strip()
    if override:
        return Path(override)
    candidate = repo_root() / VENV_DIR / "bin" / "python"
    return candidate if candidate.is_file() else None


def vllm_installed() -> bool:
    python = vllm_python()
    return python is not None and python.exists()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ------------------------------------------------------------------------------------------ process
class VLLMProcess:
    """A vLLM OpenAI-compatible server for one language-model folder, on 127.0.0.1 only.

    Use as a context manager, or call `start` / `stop`; every started server is also stopped when
    this process exits. The server runs in its own process group so that stopping it also stops the
    engine processes it spawns.
    """

    def __init__(
        self,
        model_folder,
        *,
        dtype: str = "auto",
        max_model_len: int | None = None,
        python=None,
        port: int | None = None,
        log_path=None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = STARTUP_TIMEOUT_S,
        kv_cache_gib: int = DEFAULT_KV_CACHE_GIB,
        enforce_eager: bool | None = None,
    ):
        self.model_folder = Path(model_folder)
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.python = Path(python) if python is not None else vllm_python()
        self.port = port
        self.log_path = Path(log_path) if log_path is not None else None
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.kv_cache_gib = kv_cache_gib
        # On CPU, vLLM's compiled warm-up takes minutes (5 min for SmolLM2-135M on 2 cores) and buys little
        # for small models; CUDA keeps its graphs. (Our torch may be a CPU build beside a CUDA vLLM.)
        if enforce_eager is None:
            enforce_eager = not (torch.cuda.is_available() or shutil.which("nvidia-smi"))
        self.enforce_eager = enforce_eager
        self._popen: subprocess.Popen | None = None
        self._last_code: int | None = None
        self._lock = threading.RLock()
        self.starts = 0

    # -- state ----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def is_running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._last_code if self._popen is None else self._popen.poll()

    def describe_exit(self) -> str:
        code = self.returncode
        return f"exit code {code}" if code is not None else "not started"

    def command(self) -> list[str]:
        cmd = [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_folder),
            "--served-model-name", SERVED_NAME,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--enable-prompt-embeds",
            "--dtype", self.dtype,
            # Sampling defaults come from our settings, not from the folder's generation_config.json.
            "--generation-config", "vllm",
        ]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        return cmd + self.extra_args

    # -- start / stop ---------------------------------------------------------------------------
    def start(self) -> VLLMProcess:
        """Start the server and wait until it answers; a `VLLMError` names the log when it does not."""
        with self._lock:
            if self.is_running():
                return self
            if self.python is None or not self.python.exists():
                raise VLLMError(
                    "vLLM is not installed: run `bash scripts/setup-vllm.sh` (it makes .venv-vllm), or set "
                    f"{PYTHON_ENV} to a Python that has vLLM."
                )
            if not (self.model_folder / "config.json").is_file():
                raise VLLMError(f"{self.model_folder} is not a language-model folder (no config.json).")
            if self.port is None or self.starts:
                self.port = free_port()
            if self.log_path is None:
                from napari_med3dvlm.model.bases import cache_dir

                self.log_path = cache_dir() / "vllm" / f"server-{os.getpid()}-{self.port}.log"
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ)
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
            env.setdefault("VLLM_NO_USAGE_STATS", "1")
            env.setdefault("DO_NOT_TRACK", "1")
            env.pop("PYTHONPATH", None)  # our environment's packages must not shadow vLLM's
            with open(self.log_path, "ab") as log:
                self._popen = subprocess.Popen(
                    self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=env, start_new_session=True,
                )
            self.starts += 1
            _live.add(self)
            logger.info("vLLM starting on %s (log %s)", self.url, self.log_path)
            try:
                self._wait_ready()
            except BaseException:
                self.stop()
                raise
            return self

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=2.0) as http:
            while True:
                if not self.is_running():
                    raise VLLMError(
                        f"vLLM stopped while starting ({self.describe_exit()}); its log: {self.log_path}"
                    )
                try:
                    if http.get(f"{self.url}/v1/models").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise VLLMError(
                        f"vLLM did not answer within {self.startup_timeout:.0f} s; its log: {self.log_path}"
                    )
                time.sleep(0.5)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server and the processes it spawned (SIGTERM, then SIGKILL after ``timeout``)."""
        with self._lock:
            popen, self._popen = self._popen, None
            _live.discard(self)
            if popen is None:
                return
            if popen.poll() is None:
                _signal_group(popen, signal.SIGTERM)
                try:
                    popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    _signal_group(popen, signal.SIGKILL)
                    popen.wait(5)
            _signal_group(popen, signal.SIGKILL)  # engine processes left behind by the server
            self._last_code = popen.returncode

    def restart(self) -> VLLMProcess:
        self.stop()
        return self.start()

    def ensure_running(self) -> VLLMProcess:
        """Start the server again when it stopped (a crash, a kill); a `VLLMError` when it cannot."""
        with self._lock:
            if self.is_running():
                return self
            if self._popen is not None:
                logger.warning("vLLM stopped (%s); starting it again (log %s)", self.describe_exit(), self.log_path)
                self.stop()
            return self.start()

    def __enter__(self) -> VLLMProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(popen: subprocess.Popen, sig) -> None:
    try:
        os.killpg(popen.pid, sig)  # the group is the server's own (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


_live: set[VLLMProcess] = set()


@atexit.register
def _stop_all() -> None:
    for process in list(_live):
        process.stop(timeout=5.0)


# ------------------------------------------------------------------------------------------ client
def encode_prompt_embeds(embeds: torch.Tensor) -> str:
    """The wire form of ``prompt_embeds``: base64 of a ``torch.save``d (sequence, hidden) tensor."""
    if embeds.dim() != 2:
        raise ValueError(f"prompt embeddings must be (sequence, hidden), got {tuple(embeds.shape)}")
    buffer = io.BytesIO()
    torch.save(embeds.detach().cpu().contiguous(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class VLLMClient:
    """Completions from prompt embeddings over vLLM's OpenAI-compatible HTTP API (httpx)."""

    def __init__(self, base_url: str, model: str | None = None, connect_timeout: float = 5.0,
                 read_timeout: float = 300.0, process: VLLMProcess | None = None):
        import httpx

        self.base_url = base_url.rstrip("/")
        self._model = model
        self.process = process
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )

    def close(self) -> None:
        self._http.close()

    @property
    def model(self) -> str:
        """The served model's name (the only one, for a server we started; asked for otherwise)."""
        if self._model is None:
            data = self._request("GET", "/v1/models").json()
            names = [m.get("id") for m in data.get("data", [])]
            if not names:
                raise VLLMError(f"the vLLM server at {self.base_url} serves no model")
            self._model = names[0]
        return self._model

    def _where(self) -> str:
        if self.process is not None:
            return f"vLLM ({self.process.describe_exit() if not self.process.is_running() else 'running'}; its log: {self.process.log_path})"
        return f"the vLLM server at {self.base_url}"

    def _connection_error(self, err, what: str = "does not answer") -> VLLMError:
        if self.process is not None:
            time.sleep(0.2)  # a killed server's exit status arrives a moment after its connections close
            if not self.process.is_running():
                return VLLMError(f"vLLM stopped ({self.process.describe_exit()}; its log: {self.process.log_path}); "
                                 "the next request starts it again")
        return VLLMError(f"{self._where()} {what} ({err}); start it, or set Settings > "
                         "Language model to 'transformers'")

    def _request(self, method: str, path: str, **kwargs):
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise self._connection_error(type(err).__name__) from err
        if response.status_code != 200:
            raise VLLMError(f"{self._where()} refused the request (HTTP {response.status_code}): {_error_text(response)}")
        return response

    def body(self, embeds: torch.Tensor, params: dict, stream: bool) -> dict:
        return {
            "model": self.model,
            "prompt_embeds": encode_prompt_embeds(embeds),
            "stream": stream,
            "return_token_ids": True,
            "skip_special_tokens": True,
            **params,
        }

    def stream_token_ids(self, embeds: torch.Tensor, params: dict,
                         cancel_event: threading.Event | None = None) -> Iterator[list[int]]:
        """Yield the new token ids as the server sends them (SSE); stops (and lets vLLM abort the
        request, by closing the connection) once ``cancel_event`` is set or the caller stops reading."""
        import httpx

        body = self.body(embeds, params, stream=True)
        try:
            with self._http.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise VLLMError(
                        f"{self._where()} refused the request (HTTP {response.status_code}): {_error_text(response)}"
                    )
                for line in response.iter_lines():
                    if cancel_event is not None and cancel_event.is_set():
                        return
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    event = json.loads(data)
                    if "error" in event:
                        raise VLLMError(f"{self._where()} failed: {_message(event['error'])}")
                    for choice in event.get("choices", []):
                        ids = choice.get("token_ids")
                        if ids:
                            yield [int(i) for i in ids]
            if cancel_event is None or not cancel_event.is_set():  # closed before its [DONE]
                raise self._connection_error("the answer stopped before its end", "broke off")
        except httpx.HTTPError as err:
            raise self._connection_error(type(err).__name__) from err

    def complete_token_ids(self, embeds: torch.Tensor, params: dict) -> list[int]:
        """All new token ids of one completion (not streamed)."""
        event = self._request("POST", "/v1/completions", json=self.body(embeds, params, stream=False)).json()
        return [int(i) for i in (event["choices"][0].get("token_ids") or [])]

    def complete_many(self, embeds: Sequence[torch.Tensor], params: dict, max_concurrency: int = 64) -> list[list[int]]:
        """Token ids of many completions, sent concurrently so that vLLM batches them; in order."""
        if not embeds:
            return []
        with ThreadPoolExecutor(max_workers=min(max_concurrency, len(embeds)), thread_name_prefix="vllm") as pool:
            return list(pool.map(lambda e: self.complete_token_ids(e, params), embeds))


def _error_text(response) -> str:
    try:
        return _message(response.json())
    except ValueError:
        return " ".join(response.text.split())[:300]


def _message(value) -> str:
    if isinstance(value, dict):
        inner = value.get("error", value)
        if isinstance(inner, dict):
            return " ".join(str(inner.get("message", inner)).split())[:300]
        return " ".join(str(value.get("message", inner)).split())[:300]
    return " ".join(str(value).split())[:300]


# ------------------------------------------------------------------------------------------ settings
def sampling_params(settings, generation_config=None, eos_token_id: int | None = None) -> dict:
    """The request's sampling fields for ``settings``: greedy at temperature 0, else temperature and
    top-p with the settings' seed. The stop token is ours (the tokenizer's end-of-sequence, as
    in-process) and a repetition penalty of the model's generation config is applied as in-process."""
    params = {"max_tokens": settings.max_new_tokens, "seed": settings.seed}
    if settings.temperature > 0:
        params.update(temperature=settings.temperature, top_p=settings.top_p)
    else:
        params.update(temperature=0.0)
    if eos_token_id is not None:
        params["stop_token_ids"] = [int(eos_token_id)]
    penalty = getattr(generation_config, "repetition_penalty", None)
    if penalty not in (None, 1.0):
        params["repetition_penalty"] = float(penalty)
    return params


_tokenizer_lock = threading.Lock()  # fast tokenizers must not be used from two threads at once


def prompt_embeds(model, tokenizer, prompt: str, image_features: torch.Tensor) -> torch.Tensor:
    """(sequence, hidden): the spliced ``inputs_embeds`` the in-process ``generate`` starts from."""
    with _tokenizer_lock:
        input_ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    device = next(model.parameters()).device
    with torch.inference_mode():
        embeds = model.prepare_inputs_embeds(input_ids.to(device), image_features.to(device))
    return embeds[0].detach().cpu().contiguous()


def text_pieces(tokenizer, token_chunks: Iterator[list[int]]) -> Iterator[str]:
    """Text pieces from token ids, as the in-process ``TextIteratorStreamer`` makes them (one token at
    a time, special tokens skipped), so that a streamed answer reads the same either way."""
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=False, skip_special_tokens=True)
    queue = streamer.text_queue

    def drain():
        while not queue.empty():
            piece = queue.get_nowait()
            if piece is not streamer.stop_signal and piece:
                yield piece

    for chunk in token_chunks:
        for token in chunk:
            with _tokenizer_lock:
                streamer.put(torch.tensor([token]))
            yield from drain()
    with _tokenizer_lock:
        streamer.end()
    yield from drain()


# ------------------------------------------------------------------------------------------ engine glue
def language_model_folder(engine) -> Path:
    """A plain transformers folder (weights, config, tokenizer) with the engine's merged language
    model, written once per model and dtype into the cache (``<cache>/vllm/lm-<key>``)."""
    from napari_med3dvlm.model.bases import cache_dir
    from napari_med3dvlm.model.language_model import save_language_model

    model, tokenizer = engine.load()
    dtype = next(model.language_model.parameters()).dtype
    known = _folders.get(id(model))
    if known is not None and known[0]() is model and (known[1] / "config.json").is_file():
        return known[1]  # asked on every request: the loaded model's folder is remembered
    key = _source_key(engine.settings.model_source, dtype)
    folder = cache_dir() / "vllm" / f"lm-{key}"
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        _folders[id(model)] = (weakref.ref(model), folder)
        return folder
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".lm-", dir=folder.parent))
    try:
        save_language_model(model, tokenizer, work)
        try:
            work.rename(folder)
        except OSError:  # another process wrote it first
            pass
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _folders[id(model)] = (weakref.ref(model), folder)
    return folder


_folders: dict[int, tuple] = {}  # id(model) -> (weak reference to it, its folder)


def _source_key(source: str, dtype: torch.dtype) -> str:
    """The content fingerprint of the model's files (`model.sources.content_fingerprint`: a copy or a
    reinstall of the same weights reuses the folder), the dtype and library versions."""
    import transformers

    from napari_med3dvlm.model.loading import resolve_source
    from napari_med3dvlm.model.sources import content_fingerprint

    parts = [dtype_name(dtype), torch.__version__, transformers.__version__]
    try:
        root = resolve_source(source).resolve()
    except Exception:  # noqa: BLE001 - a source the engine loaded; its string is the key then
        root = None
    if root is not None and root.is_dir():
        parts.append(content_fingerprint([p for p in root.rglob("*") if p.is_file()], root=root))
    else:
        parts.append(str(source))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


_processes: dict[Path, VLLMProcess] = {}
_clients: dict[str, VLLMClient] = {}
_registry_lock = threading.Lock()


def start_vllm_for(target, **options) -> VLLMProcess:
    """A running vLLM server for ``target``: an `InferenceEngine` (its merged language model, written
    as a plain folder once) or a language-model folder (e.g. from ``napari-med3dvlm export-llm``).

    One server per folder per process: a second call returns the same server, started again if it
    stopped. ``options`` go to `VLLMProcess` (``dtype``, ``max_model_len``, ``extra_args`` such as
    ``["--tensor-parallel-size", "2"]``...)."""
    if isinstance(target, (str, os.PathLike)):
        folder = Path(target).expanduser().resolve()
    else:
        folder = language_model_folder(target).resolve()
        model, _ = target.load()
        options.setdefault("dtype", dtype_name(next(model.language_model.parameters()).dtype))
        options.setdefault("max_model_len", min(int(target.context_length), 8192))
    with _registry_lock:
        process = _processes.get(folder)
        if process is None:
            process = _processes[folder] = VLLMProcess(folder, **options)
    return process.ensure_running()


def client_for(engine, settings) -> VLLMClient:
    """The client for ``settings.vllm_url`` when set, else for a server started for the engine's model."""
    url = (getattr(settings, "vllm_url", "") or "").strip()
    process = None
    if not url:
        process = start_vllm_for(engine)
        url = process.url
    with _registry_lock:
        client = _clients.get(url)
        if client is None:
            client = _clients[url] = VLLMClient(url, model=SERVED_NAME if process is not None else None, process=process)
    return client


def stream_vllm(engine, prompt: str, image_features: torch.Tensor, settings,
                cancel_event: threading.Event | None = None) -> Iterator[str]:
    """The engine's ``stream`` through vLLM: text pieces of the completion for the spliced prompt."""
    model, tokenizer = engine.load()
    embeds = prompt_embeds(model, tokenizer, prompt, image_features)
    params = sampling_params(settings, model.language_model.generation_config, tokenizer.eos_token_id)
    client = client_for(engine, settings)
    yield from text_pieces(tokenizer, client.stream_token_ids(embeds, params, cancel_event))


def stop_all() -> None:
    """Stop every server this process started (they also stop at exit)."""
    with _registry_lock:
        processes = list(_processes.values())
        _processes.clear()
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()
    for process in processes:
        process.stop()
