"""Where the model looked: a 3D relevance map for a span of generated text.

The score of a span (a sentence of a report, a chat answer, a closed-question choice) is its
log-likelihood under the model, given the volume and everything before it::

    score = sum_t log p(token_t | image, prompt, text before t)      over the span's tokens

It is differentiated once with respect to the volume, and the gradient is turned into a map:

``gradcam``
    Grad-CAM on the DCFormer stage maps the projector reads (s3 and s4 for the mixer): each stage's
    channels weighted by their mean gradient, rectified, upsampled to the model input and averaged.
    Coarse (stride 32 and 64), but it says which part of the image the text's tokens lean on.
``input``
    gradient x input on the model input itself, rectified and smoothed over a few voxels: as fine as
    the input, noisier.
``combined`` (default)
    their product (normalised each), as guided Grad-CAM does: Grad-CAM's region, the gradient's
    detail within it. On small inputs (the demo model's 32 slices give s3 a depth of one) Grad-CAM
    alone cannot say which slice; the product can.

The map lives on the model input grid (plane stack, cropped, resized) and is mapped back through
the `PreprocessTransform` into the layer's voxel grid, so it overlays the source layer with the
source layer's own scale and translate. The same code runs for the embedded model and a published
model folder: it only needs ``vision_tower.encoder``, ``mm_projector`` and ``language_model``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_med3dvlm.io import PreprocessTransform
from napari_med3dvlm.model import prompts

METHODS = ("combined", "gradcam", "input")
DEFAULT_METHOD = "combined"
#: Gaussian smoothing of gradient x input, in model voxels.
INPUT_SIGMA = 1.5
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


# ---------------------------------------------------------------------------------------- spans


@dataclass(frozen=True)
class SpanTarget:
    """What to explain: ``continuation[start:end]`` as it follows ``prompt`` (which starts with the
    image placeholder tokens). ``label`` names the span in layer names and exports."""

    prompt: str
    continuation: str
    start: int
    end: int
    label: str = ""

    @property
    def text(self) -> str:
        return self.continuation[self.start : self.end]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character ranges of the sentences of ``text``; "3.5 cm" does not end one (the
    same rule as `phantoms.findings.sentences`)."""
    spans, pos = [], 0
    for match in list(_SENTENCE_END.finditer(text)) + [None]:
        stop = match.start() if match else len(text)
        chunk = text[pos:stop]
        lead = len(chunk) - len(chunk.lstrip())
        if chunk.strip():
            spans.append((pos + lead, pos + len(chunk.rstrip())))
        pos = match.end() if match else len(text)
    return spans


def sentence_at(text: str, position: int) -> tuple[int, int] | None:
    """The sentence containing character ``position`` (the nearest before it between sentences)."""
    spans = sentence_spans(text)
    if not spans:
        return None
    for start, end in spans:
        if start <= position <= end:
            return start, end
    before = [s for s in spans if s[1] <= position]
    return before[-1] if before else spans[0]


def short_label(text: str, limit: int = 40) -> str:
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def report_target(proj_out_num: int, report: str, start: int, end: int, request: str | None = None) -> SpanTarget:
    """A span of a report (character range in ``report``, as the Report dock and exports show it),
    after the report request, the way the model was trained (target = " " + report)."""
    report = report.strip()
    prompt = prompts.image_prefix(proj_out_num) + prompts.report_text(request)
    return _target(prompt, " " + report, start + 1, end + 1)


def answer_target(proj_out_num: int, history: Sequence[prompts.Turn], question: str, answer: str,
                  choices: Sequence[str] | None = None, start: int | None = None, end: int | None = None,
                  count_tokens=None, max_tokens: int = 2048, reserve: int = 0) -> SpanTarget:
    """A chat answer (or ``answer[start:end]``) to ``question`` after the earlier turns ``history``
    (``count_tokens``, ``max_tokens`` and ``reserve`` as when it was asked, so the same turns are kept)."""
    answer = answer.strip()
    prompt, _ = prompts.chat_prompt(proj_out_num, history, question, choices, count_tokens=count_tokens,
                                    max_tokens=max_tokens, reserve=reserve)
    start = 0 if start is None else start
    end = len(answer) if end is None else end
    return _target(prompt, " " + answer, start + 1, end + 1)


def choice_target(proj_out_num: int, history: Sequence[prompts.Turn], question: str, choice: str,
                  count_tokens=None, max_tokens: int = 2048, reserve: int = 0) -> SpanTarget:
    """A closed-question choice as it is ranked (`InferenceEngine.rank_choices`): the choice's text
    after the open question."""
    prompt, _ = prompts.chat_prompt(proj_out_num, history, question, None, count_tokens=count_tokens,
                                    max_tokens=max_tokens, reserve=reserve)
    choice = str(choice).strip()
    return _target(prompt, " " + choice, 1, 1 + len(choice))


def _target(prompt: str, continuation: str, start: int, end: int) -> SpanTarget:
    start, end = max(0, int(start)), min(len(continuation), int(end))
    if end <= start:
        raise ValueError("the span to explain is empty")
    return SpanTarget(prompt, continuation, start, end, short_label(continuation[start:end]))


def span_token_ids(tokenizer, prompt: str, target: SpanTarget) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids (1, L), boolean mask (L,) of the span's tokens) for prompt + continuation."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    try:
        encoded = tokenizer(target.continuation, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
        cont_ids = encoded["input_ids"]
        in_span = [e > target.start and s < target.end for s, e in offsets]
    except (NotImplementedError, TypeError, KeyError):  # a slow tokenizer: no offsets
        before = tokenizer(target.continuation[: target.start], add_special_tokens=False)["input_ids"]
        span = tokenizer(target.continuation[target.start : target.end], add_special_tokens=False)["input_ids"]
        after = tokenizer(target.continuation[target.end :], add_special_tokens=False)["input_ids"]
        cont_ids = before + span + after
        in_span = [False] * len(before) + [True] * len(span) + [False] * len(after)
    if not any(in_span):
        raise ValueError("the span has no tokens")
    ids = torch.tensor([list(prompt_ids) + list(cont_ids)], dtype=torch.long)
    mask = torch.tensor([False] * len(prompt_ids) + list(in_span))
    return ids, mask


# ---------------------------------------------------------------------------------------- maps


@dataclass
class RelevanceMap:
    """A relevance map in model-input space, the transform that maps it onto its layer, and what
    it explains."""

    model_map: np.ndarray  # (D, H, W) plane stack at model resolution, in [0, 1]
    transform: PreprocessTransform
    label: str = ""
    span: str = ""
    method: str = DEFAULT_METHOD
    log_likelihood: float = float("nan")
    n_tokens: int = 0
    duration_s: float = 0.0

    def layer_map(self) -> np.ndarray:
        """The map on the source layer's voxel grid (display order, the layer's shape): overlay it
        with the layer's scale and translate. Scaled so that its maximum is 1 again after resampling."""
        grid = to_layer_grid(self.model_map, self.transform)
        top = float(grid.max())
        return grid / top if top > 0 else grid

    def to_dict(self) -> dict:
        return {"span": self.span, "label": self.label, "method": self.method,
                "log_likelihood": self.log_likelihood, "tokens": self.n_tokens,
                "duration_s": round(self.duration_s, 3), "preprocessing": self.transform.to_dict()}


def to_layer_grid(model_map: np.ndarray, transform: PreprocessTransform) -> np.ndarray:
    """Undo the resize and the crop of `preprocess_volume` (trilinear, voxel centres as in the
    forward resize), zero outside the crop, then the plane stack back to display order."""
    start, stop = transform.crop_start, transform.crop_stop
    crop = tuple(int(b - a) for a, b in zip(start, stop))
    tensor = torch.from_numpy(np.ascontiguousarray(model_map, dtype=np.float32))[None, None]
    if tuple(tensor.shape[2:]) != crop:
        tensor = F.interpolate(tensor, size=crop, mode="trilinear", align_corners=False)
    full = np.zeros(transform.input_shape, dtype=np.float32)
    full[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]] = tensor[0, 0].numpy()
    return np.ascontiguousarray(transform.to_display(full))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    x = torch.nan_to_num(x.float()).clamp_min(0)
    top = x.max()
    return x / top if top > 0 else x


def _gaussian_blur3d(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (D, H, W) tensor."""
    if sigma <= 0:
        return x
    radius = max(1, int(round(2.5 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype)
    out = x[None, None]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), kernel.view(shape))
    return out[0, 0]


def grad_cam(stage_map: torch.Tensor, stage_grad: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Grad-CAM of one (1, C, d, h, w) map and its gradient, upsampled to ``size`` (D, H, W)."""
    weights = stage_grad.float().mean(dim=(2, 3, 4), keepdim=True)
    cam = torch.relu((weights * stage_map.float()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=tuple(size), mode="trilinear", align_corners=False)
    return _normalise(cam[0, 0])


def combine_maps(image: torch.Tensor, image_grad: torch.Tensor, stage_maps, stage_grads,
                 method: str = DEFAULT_METHOD, sigma: float = INPUT_SIGMA) -> torch.Tensor:
    """The (D, H, W) map of ``method`` from the gradients of one score (see the module doc)."""
    if method not in METHODS:
        raise ValueError(f"unknown relevance method {method!r}; choose from {METHODS}")
    size = image.shape[2:]
    saliency = cam = None
    if method in ("input", "combined"):
        saliency = _normalise(_gaussian_blur3d(torch.relu(image_grad.float() * image.float())[0, 0], sigma))
    if method in ("gradcam", "combined"):
        cams = [grad_cam(m, g, size) for m, g in zip(stage_maps, stage_grads)]
        cam = _normalise(torch.stack(cams).mean(0))
        if cam.max() <= 0:  # no positive evidence at these stages: fall back to the input term
            cam = None if method == "combined" else cam
    if method == "input" or cam is None:
        return saliency
    if method == "gradcam":
        return cam
    return _normalise(cam * saliency)


def attribute(score_fn: Callable, image: torch.Tensor, method: str = DEFAULT_METHOD,
              cancel_event: threading.Event | None = None) -> tuple[torch.Tensor, float] | None:
    """Differentiate ``score_fn(image) -> (score, [stage maps (1, C, d, h, w)])`` once and return
    (map (D, H, W) in [0, 1], score), or None when cancelled before the backward pass.

    Works for any model whose score is differentiable in its input: the VLM (`explain`) and the
    supervised probe of the pointing-game evaluation share it."""
    image = image.detach().clone().requires_grad_(True)
    with torch.enable_grad(), _frozen_parameters(score_fn):
        score, maps = score_fn(image)
        if cancel_event is not None and cancel_event.is_set():
            return None
        grads = torch.autograd.grad(score, [image, *maps], allow_unused=True)
    image_grad = grads[0] if grads[0] is not None else torch.zeros_like(image)
    stage_grads = [g if g is not None else torch.zeros_like(m) for g, m in zip(grads[1:], maps)]
    with torch.no_grad():
        out = combine_maps(image.detach(), image_grad, [m.detach() for m in maps], stage_grads, method)
    return out, float(score.detach())


_freeze_lock = threading.RLock()


@contextmanager
def _frozen_parameters(score_fn):
    """No parameter gradients while explaining: less memory (activations only), and the model's
    own ``requires_grad`` flags are restored afterwards."""
    module = getattr(score_fn, "module", None)
    if module is None:
        yield
        return
    with _freeze_lock:
        params = [p for p in module.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in params:
                p.requires_grad_(True)


class VLMSpanScore:
    """``score_fn`` for `attribute`: the span's log-likelihood under a Med3DVLM, and the DCFormer
    stage maps its projector reads."""

    def __init__(self, model, input_ids: torch.Tensor, span_mask: torch.Tensor):
        self.module = model
        self.input_ids = input_ids
        self.span_mask = span_mask

    def stage_indices(self) -> list[int]:
        picked = self.module.select_image_tokens(list(range(5)))
        return list(picked) if isinstance(picked, (list, tuple)) else [picked]

    def __call__(self, image: torch.Tensor):
        from napari_med3dvlm.model.dcformer import feature_map_to_tokens

        model = self.module
        tower = model.vision_tower
        param = next(tower.parameters())
        x = image.to(device=param.device, dtype=param.dtype)
        tower._check_input(x)
        # the stage maps, (B, C, H, W, D), viewed as (B, C, D, H, W): the tokens are taken from these
        # views so that the gradient reaches them
        maps = [m.permute(0, 1, 4, 2, 3) for m in tower.encoder(x.permute(0, 1, 3, 4, 2))]
        tokens = [feature_map_to_tokens(m.permute(0, 1, 3, 4, 2)) for m in maps]
        selected = model.select_image_tokens(tokens)
        dtype = model.mm_projector_dtype
        if isinstance(selected, (list, tuple)):
            features = model.mm_projector(*[t.to(dtype) for t in selected])
        else:
            features = model.mm_projector(selected.to(dtype))
        ids = self.input_ids.to(param.device)
        embeds = model.prepare_inputs_embeds(ids, features)
        positions = torch.nonzero(self.span_mask.to(param.device)).flatten()
        first = int(positions.min())
        keep = ids.shape[1] - first + 1  # logits from the token before the span onwards
        lm = model.language_model
        try:
            out = lm(inputs_embeds=embeds, logits_to_keep=keep)
        except TypeError:
            out = lm(inputs_embeds=embeds)
        logits = out.logits[0, -keep:].float() if out.logits.shape[1] >= keep else out.logits[0].float()
        offset = ids.shape[1] - logits.shape[0]  # logits[i] is at sequence position offset + i
        log_probs = torch.log_softmax(logits[positions - 1 - offset], dim=-1)
        score = log_probs.gather(-1, ids[0, positions].unsqueeze(-1)).sum()
        return score, [maps[i] for i in self.stage_indices()]


def explain(model, tokenizer, image: torch.Tensor, transform: PreprocessTransform, target: SpanTarget,
            method: str = DEFAULT_METHOD, cancel_event: threading.Event | None = None) -> RelevanceMap | None:
    """The relevance map of ``target`` for the model input ``image`` (1, 1, D, H, W) that
    `io.model_input` made with ``transform``; None when cancelled."""
    started = time.time()
    ids, mask = span_token_ids(tokenizer, target.prompt, target)
    result = attribute(VLMSpanScore(model, ids, mask), image, method, cancel_event)
    if result is None:
        return None
    out, score = result
    return RelevanceMap(
        model_map=out.cpu().numpy().astype(np.float32), transform=transform, label=target.label,
        span=target.text, method=method, log_likelihood=score, n_tokens=int(mask.sum()),
        duration_s=time.time() - started,
    )


def stream_relevance(engine, volume, target, method: str = DEFAULT_METHOD,
                     cancel_event: threading.Event | None = None) -> Generator[str, None, RelevanceMap | None]:
    """A task for the docks' workers: yields progress messages, returns the `RelevanceMap` (with its
    ``layer`` map filled in) or None when cancelled. ``volume`` is an `io.Volume`; ``target`` a
    `SpanTarget`, or ``target(engine) -> SpanTarget`` when building it needs the loaded model (its
    image-token count, its tokenizer), so that the caller's thread never loads the model."""
    cancel_event = cancel_event or threading.Event()
    yield "Loading the model…"
    engine.load()
    if callable(target):
        target = target(engine)
    if cancel_event.is_set():
        return None
    yield f"Back-propagating the span's likelihood ({method})…"
    try:
        result = engine.explain(volume, target, method, cancel_event)
    except Exception as err:  # noqa: BLE001
        from napari_med3dvlm.errors import ModelUnavailableError
        from napari_med3dvlm.model.device import is_out_of_memory

        if is_out_of_memory(err):
            raise ModelUnavailableError(
                "The relevance map ran out of memory (it keeps the activations of one forward pass); "
                "set Settings > Device to 'cpu', Dtype to 'bfloat16', or explain a shorter span."
            ) from err
        raise
    if result is None or cancel_event.is_set():
        return None
    yield "Mapping onto the layer…"
    result.layer = result.layer_map()
    return result


def layer_kwargs(result: RelevanceMap, scale, translate, prefix: str = "Where") -> dict:
    """napari Image layer keyword arguments for a map over a layer with ``scale``/``translate``."""
    return {
        "name": f"{prefix}: {result.label}",
        "scale": tuple(float(s) for s in scale),
        "translate": tuple(float(t) for t in translate),
        "colormap": "inferno",
        "blending": "additive",
        "opacity": 0.6,
        "contrast_limits": (0.0, 1.0),
        "metadata": {"med3dvlm_relevance": result.to_dict()},
    }


def write_sentence_maps(engine, volume, source, text: str, folder, stem: str, request: str | None = None,
                        method: str = DEFAULT_METHOD) -> list:
    """One NIfTI map per sentence of the report ``text`` (``<stem>-where-NN.nii.gz``), and
    ``<stem>-where.json`` naming each file's sentence. The engine preprocesses the volume once for
    all sentences.

    Each map is on the grid of ``source``, the `Volume` that ``volume`` came from: for a NIfTI
    source in that file's own voxel order, so it has the file's shape and affine; otherwise (DICOM)
    as `write_nifti_volume` writes ``source`` itself."""
    import json
    from pathlib import Path

    from napari_med3dvlm.io import Volume, write_nifti_volume

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written, index = [], []
    for number, (start, end) in enumerate(sentence_spans(text.strip()), start=1):
        target = report_target(engine.proj_out_num, text, start, end, request)
        result = engine.explain(volume, target, method)
        path = folder / f"{stem}-where-{number:02d}.nii.gz"
        write_nifti_volume(Volume(data=result.layer_map(), spacing=source.spacing, origin=source.origin,
                                  affine=source.affine, modality="relevance", description=target.label), path,
                           stored_orientation=source.metadata.get("stored_orientation"))
        written.append(path)
        index.append({"file": path.name, **result.to_dict()})
    (folder / f"{stem}-where.json").write_text(json.dumps({"method": method, "maps": index}, indent=1),
                                               encoding="utf-8")
    return written
