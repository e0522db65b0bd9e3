"""The inference engine: one model per process, shared by every dock and the command line.

Loading a VLM takes seconds to minutes and gigabytes, so it happens once (lazily, on the first
request) and the Report, Chat and CLI paths all reuse it. Generation runs in a background thread
and streams text pieces, and a cancel event stops it at the next token.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

import torch
from transformers import StoppingCriteriaList, TextIteratorStreamer

from napari_med3dvlm.errors import ModelUnavailableError
from napari_med3dvlm.io import Volume, model_input
from napari_med3dvlm.model import prompts
from napari_med3dvlm.model.device import configure_cpu_threads, dtype_for, dtype_name, get_device, is_out_of_memory
from napari_med3dvlm.model.sources import display_model_id, offline, source_kind
from napari_med3dvlm.settings import InferenceSettings, load_settings

from .features import EncodedImage, FeatureCache, volume_signature

logger = logging.getLogger(__name__)

#: ``loader(source, device, dtype) -> (model, tokenizer)``; defaults to ``napari_med3dvlm.model.load_vlm``.
Loader = Callable[[str, torch.device, torch.dtype], tuple]

_STREAM_POLL_S = 0.05




def _default_loader(source: str, device: torch.device, dtype: torch.dtype):
    from napari_med3dvlm.model import load_vlm

    return load_vlm(source, device=device, dtype=dtype)


class _ModelThread:
    """One long-lived thread that runs every model computation of the process.

    torch's CPU kernels run on OpenMP, and every thread that starts a parallel region owns a team of
    worker threads. Once two threads have driven torch (say the caller encoded and a fresh thread
    generated), libgomp counts more workers than cores and stops letting idle workers spin: each of
    the hundreds of parallel regions per token then puts a worker to sleep and wakes it again. On two
    cores that made decoding in a per-request thread run at two thirds of a main-thread ``generate``
    (about 4,000 voluntary context switches per 64 tokens against 46, and half the CPU time used).
    With all model work on this one thread, there is one team, whatever thread asks.
    """

    def __init__(self):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="med3dvlm-model", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            future, fn, args, kwargs = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as err:  # noqa: BLE001 - handed to the caller
                future.set_exception(err)

    def submit(self, fn, *args, **kwargs) -> Future:
        future: Future = Future()
        self._jobs.put((future, fn, args, kwargs))
        return future

    def call(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` on the model thread (directly when already on it)."""
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        return self.submit(fn, *args, **kwargs).result()


_model_thread: _ModelThread | None = None
_model_thread_lock = threading.Lock()


def model_thread() -> _ModelThread:
    """The process's model thread (started on first use)."""
    global _model_thread
    with _model_thread_lock:
        if _model_thread is None:
            _model_thread = _ModelThread()
        return _model_thread


class InferenceEngine:
    """Loads the model on first use, caches image features, and streams generated text."""

    def __init__(
        self,
        settings: InferenceSettings | None = None,
        loader: Loader | None = None,
        cache_size: int = 8,
    ):
        self._settings = settings or load_settings()
        self._loader = loader or _default_loader
        self._model = None
        self._tokenizer = None
        self._loaded_key = None
        self._threads_before: int | None = None
        self._load_lock = threading.RLock()
        self._generate_lock = threading.Lock()
        self.features = FeatureCache(cache_size)
        self._explain_input = None  # (signature, model input, transform) of the last volume explained

    # -- settings and loading -------------------------------------------------------------------

    @property
    def settings(self) -> InferenceSettings:
        return self._settings

    def update_settings(self, settings: InferenceSettings) -> None:
        """Apply new settings; the model is reloaded lazily only if source, device or dtype changed."""
        old = self._settings
        self._settings = settings
        if (old.model_source, old.device, old.dtype) != (settings.model_source, settings.device, settings.dtype):
            self.unload()

    @property
    def model_id(self) -> str:
        return display_model_id(self._settings.model_source)

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    def unload(self) -> None:
        """Drop the model and features, and give torch its threads back."""
        with self._load_lock:
            self._model = self._tokenizer = self._loaded_key = None
            self._explain_input = None
            self.features.clear()
            if self._threads_before is not None:
                torch.set_num_threads(self._threads_before)
                self._threads_before = None

    def load(self):
        """The (model, tokenizer) pair, loading it on first call (on the model thread); thread-safe."""
        if self._model is not None and self._loaded_key == self._key():
            return self._model, self._tokenizer
        return model_thread().call(self._load)

    def _key(self) -> tuple:
        s = self._settings
        return (s.model_source, s.device, s.dtype)

    def _load(self):
        with self._load_lock:
            s = self._settings
            key = (s.model_source, s.device, s.dtype)
            if self._model is not None and self._loaded_key == key:
                return self._model, self._tokenizer
            self.unload()
            device = self._device_or_raise(s.device)
            dtype = dtype_for(device, s.dtype)
            self._threads_before = configure_cpu_threads(device)
            source = s.model_source
            kind = source_kind(source)
            if kind == "folder" and not Path(source).expanduser().is_dir():
                raise ModelUnavailableError(
                    f"Model folder '{source}' does not exist. In Settings > Model source, choose "
                    "'embedded' or an existing folder."
                )
            if kind == "folder":
                source = str(Path(source).expanduser())
            logger.info("loading model %s on %s (%s)", display_model_id(source), device, dtype_name(dtype))
            try:
                model, tokenizer = self._loader(source, device, dtype)
            except ModelUnavailableError:
                raise
            except Exception as err:  # noqa: BLE001 - every failure becomes a message the user can act on
                raise self._load_error(source, kind, device, dtype, err) from err
            model.eval()
            self._model, self._tokenizer, self._loaded_key = model, tokenizer, key
            return model, tokenizer

    @staticmethod
    def _device_or_raise(preference: str) -> torch.device:
        try:
            return get_device(preference)
        except RuntimeError as err:
            raise ModelUnavailableError(str(err)) from err

    @staticmethod
    def _load_error(source, kind, device, dtype, err) -> ModelUnavailableError:
        if is_out_of_memory(err):
            hint = "set Settings > Dtype to 'bfloat16'" if dtype == torch.float32 else "set Settings > Device to 'cpu'"
            return ModelUnavailableError(
                f"The model does not fit in {device.type.upper()} memory as {dtype_name(dtype)}; {hint}, "
                "or choose a smaller model."
            )
        from napari_med3dvlm.model.files import ModelLoadError
        from napari_med3dvlm.model.loading import ModelNotAvailableError

        if isinstance(err, (ModelNotAvailableError, ModelLoadError)):
            return ModelUnavailableError(str(err))  # the loader's message names the file and what to do
        if kind == "hub" and (offline() or isinstance(err, OSError)):
            return ModelUnavailableError(
                f"Model '{source}' is a hub id that is not in the local cache, and downloads are off "
                "(offline mode or no network). Download it where the hub is reachable, or set "
                "Settings > Model source to 'embedded' or a local folder."
            )
        return ModelUnavailableError(f"Could not load model '{display_model_id(source)}': {err}")

    @property
    def runtime(self) -> dict:
        """Where the loaded model actually runs (``auto`` settings resolved), for provenance."""
        model, _ = self.load()
        param = next(model.parameters())
        return {"device": param.device.type, "dtype": dtype_name(param.dtype)}

    # -- images ---------------------------------------------------------------------------------

    @property
    def proj_out_num(self) -> int:
        model, _ = self.load()
        return int(model.config.proj_out_num)

    @property
    def image_size(self) -> tuple[int, int, int]:
        model, _ = self.load()
        return tuple(int(s) for s in model.config.image_size)

    def signature(self, volume: Volume) -> str:
        return volume_signature(
            volume.data, volume.window, model_id=self._settings.model_source, modality=f"{volume.modality}|{volume.plane}"
        )

    def encode(self, volume: Volume) -> EncodedImage:
        """Features of a display-ordered volume (`io.model_input` with the volume's window), from the
        cache when this volume was encoded before. The model gets the plane's slice stack, as in
        training."""
        key = self.signature(volume)
        cached = self.features.get(key)
        if cached is not None:
            return cached
        return model_thread().call(self._encode, volume, key)

    def _encode(self, volume: Volume, key: str) -> EncodedImage:
        model, _ = self.load()
        tensor, transform = model_input(volume, self.image_size, volume.window)
        param = next(model.parameters())
        try:
            with torch.inference_mode():
                features = model.encode_images(tensor.to(device=param.device, dtype=param.dtype))
        except Exception as err:  # noqa: BLE001
            if is_out_of_memory(err):
                raise ModelUnavailableError(
                    "Encoding the volume ran out of memory; set Settings > Device to 'cpu' or Dtype to 'bfloat16'."
                ) from err
            raise
        item = EncodedImage(features=features, transform=transform, signature=key)
        self.features.put(item)
        return item

    # -- text -----------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        _, tokenizer = self.load()
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def context_length(self) -> int:
        """Usable prompt+answer length: the tokenizer's limit when set, else the model's."""
        model, tokenizer = self.load()
        limits = [getattr(model.config, "max_position_embeddings", None)]
        text_config = getattr(model.config, "text_config", None)
        if text_config is not None:
            limits.append(getattr(text_config, "max_position_embeddings", None))
        limit = getattr(tokenizer, "model_max_length", None)
        if limit and limit < 1_000_000:
            limits.append(limit)
        limits = [int(v) for v in limits if v]
        return min(limits) if limits else 2048

    def stream(
        self,
        prompt: str,
        image_features: torch.Tensor | EncodedImage,
        settings: InferenceSettings | None = None,
        cancel_event: threading.Event | None = None,
    ) -> Iterator[str]:
        """Yield text pieces as they are generated; stops early once ``cancel_event`` is set.

        Generation runs on the model thread so the caller (a napari worker, the CLI, a server
        request) only waits on a queue. Closing the iterator early also stops the generation.
        """
        from napari_med3dvlm.model.vlm import StopOnEvent  # checked after every token: Stop is prompt

        settings = settings or self._settings
        cancel_event = cancel_event or threading.Event()
        if isinstance(image_features, EncodedImage):
            image_features = image_features.features
        if settings.llm == "vllm":  # the language model in a vLLM server (vllm_backend, docs/vllm.md)
            yield from self._stream_vllm(prompt, image_features, settings, cancel_event)
            return
        model, tokenizer = self.load()
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        device = next(model.parameters()).device
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=_STREAM_POLL_S)
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        kwargs = dict(
            image_features=image_features,
            input_ids=inputs["input_ids"].to(device),
            attention_mask=inputs["attention_mask"].to(device),
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([StopOnEvent(cancel_event)]),
            eos_token_id=eos,
            pad_token_id=pad,
            **settings.generation_kwargs(),
        )
        failure: list[BaseException] = []

        def run():
            try:
                with self._generate_lock, torch.inference_mode():
                    if settings.temperature > 0:
                        torch.manual_seed(settings.seed)
                    model.generate(**kwargs)
            except BaseException as err:  # noqa: BLE001 - re-raised in the consuming thread
                failure.append(err)
                streamer.end()

        job = model_thread().submit(run)  # one OpenMP team for all model work (`_ModelThread`)
        drained = False
        try:
            while True:
                try:
                    piece = next(streamer)
                except StopIteration:
                    break
                except queue.Empty:
                    if job.done() and streamer.text_queue.empty():
                        break
                    continue
                if piece:
                    yield piece
            drained = True
        finally:
            if not drained:  # the consumer stopped early: stop generating too
                cancel_event.set()
            job.result()
        if failure:
            err = failure[0]
            if is_out_of_memory(err):
                raise ModelUnavailableError(
                    "Generation ran out of memory; lower Settings > Max new tokens, or set Dtype to "
                    "'bfloat16' or Device to 'cpu'."
                ) from err
            raise err

    def _stream_vllm(self, prompt, image_features, settings, cancel_event) -> Iterator[str]:
        from .vllm_backend import VLLMError, stream_vllm

        try:
            yield from stream_vllm(self, prompt, image_features, settings, cancel_event)
        except VLLMError as err:
            raise ModelUnavailableError(str(err)) from err

    def rank_choices(self, prompt: str, choices, image_features: torch.Tensor | EncodedImage) -> list[float]:
        """Log-likelihood of each choice as the answer to ``prompt`` (an open-question prompt)."""
        if isinstance(image_features, EncodedImage):
            image_features = image_features.features
        return model_thread().call(self._rank_choices, prompt, choices, image_features)

    def _rank_choices(self, prompt: str, choices, image_features: torch.Tensor) -> list[float]:
        model, tokenizer = self.load()
        device = next(model.parameters()).device
        input_ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
        continuations = [prompts.choice_continuation_ids(tokenizer, c) for c in choices]
        with self._generate_lock, torch.inference_mode():
            scores = model.score_continuations(input_ids, continuations, image_features=image_features.to(device))
        return scores.tolist()

    def generate(self, prompt, image_features, settings=None, cancel_event=None) -> str:
        return "".join(self.stream(prompt, image_features, settings, cancel_event))

    def explain(self, volume: Volume, target, method: str = "combined", cancel_event: threading.Event | None = None):
        """Where the model looked for ``target`` (a `relevance.SpanTarget`): its `RelevanceMap`, or
        None when cancelled. The model input of the last volume explained is kept, so the sentences
        of one report share one preprocessing."""
        return model_thread().call(self._explain, volume, target, method, cancel_event)

    def _explain(self, volume: Volume, target, method: str, cancel_event: threading.Event | None):
        from .relevance import explain

        model, tokenizer = self.load()
        key = self.signature(volume)
        if self._explain_input is None or self._explain_input[0] != key:
            self._explain_input = (key, *model_input(volume, self.image_size, volume.window))
        _, image, transform = self._explain_input
        with self._generate_lock:
            return explain(model, tokenizer, image, transform, target, method, cancel_event)

    def check_scope(self, volume: Volume, encoded: EncodedImage | None = None):
        """What is unusual about ``volume`` for this engine's model (`scope.check_input`)."""
        from .scope import check_input

        return model_thread().call(check_input, self, volume, encoded)
