"""Stage 1: SigLIP image-report alignment (DCFormer + text encoder, pairwise sigmoid loss).

``model.text_trainable`` chooses what of the text side learns: ``full`` (the reference: every
ClinicalBERT weight), ``lora`` (peft adapters on the attention projections) or ``head`` (frozen
encoder, only the projection into the joint space; the demo, so the shipped weights stay small).
With several processes the model's loss gathers the features of all of them, so every process
contrasts its images against the global batch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from napari_med3dvlm.model import SigLIPConfig, SigLIPModel
from napari_med3dvlm.model.sources import SIGLIP_SUBFOLDER

from ..builders import config_from_dict, resolve_pretrained
from ..data import sources
from ..data.augment import AugmentConfig, AugmentedDataset
from ..config import stage_config
from ..data.instructions import CaptionTextCollator, PooledTextCollator, cached_pool_texts
from ..loop import train
from .common import (
    count_parameters,
    keep_in_eval_mode,
    load_result,
    load_vision_tower,
    loop_config,
    result_dir,
    save_result,
    stage_dir,
    trainable_parameters,
)

TEXT_CACHE_FILE = "text_features.safetensors"


def build_siglip(config: dict):
    """(SigLIPModel, text tokenizer) for a preset, the text encoder loaded from its pretrained weights."""
    model_cfg = config["model"]
    name = model_cfg["text_encoder"]
    if model_cfg.get("text_encoder_config"):
        encoder = AutoModel.from_config(config_from_dict(model_cfg["text_encoder_config"]))
    else:
        encoder = AutoModel.from_pretrained(resolve_pretrained(name))
    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(model_cfg.get("text_tokenizer") or name))
    size = config["data"]["image_size"]
    siglip_cfg = SigLIPConfig(
        language_model_name_or_path=name,
        vision_variant=model_cfg.get("vision_variant", "small"),
        vision_stem=model_cfg.get("vision_stem", "decomposed"),  # the stem the vision stage trained
        hidden_size=int(model_cfg.get("siglip_hidden_size", 768)),
        t_prime=float(model_cfg.get("t_prime", 2.6592600369262695)),
        bias=float(model_cfg.get("bias", 0.0)),
        text_pooling=model_cfg.get("text_pooling", "cls"),
        input_size=(size[1], size[2], size[0]),  # the reference's (H, W, D) convention
    )
    # Seeded here, after the text encoder exists, so the vision tower starts from the same weights
    # whether that encoder was loaded or built from its config.
    torch.manual_seed(int(stage_config(config, "siglip").get("seed", 42)))
    return SigLIPModel(siglip_cfg, language_encoder=encoder), tokenizer


def set_text_trainable(model: SigLIPModel, mode: str) -> None:
    if mode == "full":
        return
    if mode == "head":
        keep_in_eval_mode(model.language_encoder)
        return
    if mode == "lora":
        add_text_adapters(model, r=8, alpha=16)
        return
    raise ValueError(f"model.text_trainable must be full, lora or head, got {mode!r}")


def add_text_adapters(model: SigLIPModel, r: int, alpha: int) -> None:
    """LoRA on the text encoder's query and value projections (BERT and DistilBERT names)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=["query", "value", "q_lin", "v_lin"])
    model.language_encoder = get_peft_model(model.language_encoder, lora)


def siglip_loss(model, batch):
    out = model(**batch)
    with torch.no_grad():
        hits = (out.logits.argmax(dim=1) == torch.arange(out.logits.shape[0], device=out.logits.device)).float()
    return out.loss, {"batch_r1": hits.mean().item()}


def _refuse_pooling(*args, **kwargs):
    raise RuntimeError(
        "siglip.cache_text_features=require, but the pooled-report file does not match these reports: "
        "write it with the real text encoder first (same reports, text_encoder and text_max_length)"
    )


def init_vision_from_dense(model: SigLIPModel, config: dict) -> bool:
    """Start the image tower from the `vision` stage's encoder when that stage ran."""
    if not load_vision_tower(model.vision_encoder, config, "vision"):
        return False
    print("[siglip] image tower initialised from the vision stage")
    return True


def run(config: dict) -> dict:
    model, tokenizer = build_siglip(config)
    set_text_trainable(model, config["model"].get("text_trainable", "full"))
    cfg = loop_config(config, "siglip")
    stage = stage_config(config, "siglip")
    from_vision = init_vision_from_dense(model, config)
    param_groups = None
    if from_vision and stage.get("vision_lr") is not None:
        # A pretrained encoder learns at its own, lower rate, so the located features survive.
        vision = [p for p in model.vision_encoder.parameters() if p.requires_grad]
        ids = {id(p) for p in vision}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        param_groups = [{"params": vision, "lr": float(stage["vision_lr"])}, {"params": rest}]
    dataset = sources.caption_dataset(config, "train", root=stage.get("data_root"))
    max_length = int(config["model"].get("text_max_length", 512))
    caching = stage.get("cache_text_features", True)
    if config["model"].get("text_trainable", "full") == "head" and caching:
        texts = [dataset.text(i) for i in range(len(dataset))]
        cache = stage_dir(config, "siglip") / TEXT_CACHE_FILE
        encoder_id = f"{config['model']['text_encoder']}:{config['model'].get('text_pooling', 'cls')}"
        if caching == "require":  # the text encoder here is a stand-in: never pool with it
            model.pool_text = _refuse_pooling
        collate = PooledTextCollator(cached_pool_texts(model, tokenizer, texts, max_length, cache, encoder_id))
    else:
        collate = CaptionTextCollator(tokenizer, max_length=max_length)
    augment = AugmentConfig.from_dict(config["data"].get("augment"))
    if augment is not None:
        dataset = AugmentedDataset(dataset, augment, seed=cfg.seed)
    trainable = trainable_parameters(model)
    model, state, accelerator = train(
        name="siglip",
        model=model,
        dataset=dataset,
        collate_fn=collate,
        compute_loss=siglip_loss,
        cfg=cfg,
        output_dir=stage_dir(config, "siglip"),
        param_groups=param_groups,
    )
    info = {
        "steps": state.global_step,
        "minutes": round(state.elapsed_s / 60, 2),
        "samples": len(dataset),
        "trainable_parameters": count_parameters(trainable.values()),
        "vision_init": "vision stage" if from_vision else "random",
    }
    if accelerator.is_main_process:
        save_siglip_result(config, model, tokenizer, info)
    return info


def save_siglip_result(config: dict, model: SigLIPModel, tokenizer, info: dict) -> None:
    """The own weights as the stages' result file, plus a full SigLIP folder for retrieval."""
    encoder = model.language_encoder
    if hasattr(encoder, "merge_and_unload"):
        model.language_encoder = encoder.merge_and_unload()
    text_frozen = config["model"].get("text_trainable", "full") == "head"
    tensors = {
        k: v for k, v in model.state_dict().items() if not (text_frozen and k.startswith("language_encoder."))
    }
    tensors = {k.replace("vision_encoder.", "vision_tower.", 1): v for k, v in tensors.items()}
    folder = save_result(config, "siglip", tensors, info)
    model.save_pretrained(str(folder / SIGLIP_SUBFOLDER))
    tokenizer.save_pretrained(str(folder / SIGLIP_SUBFOLDER))


def trained_siglip(config: dict, after_lit: bool = True):
    """(SigLIPModel, tokenizer, where it came from) that this run trained, or None; in eval mode.

    In order: the text side the ``lit`` stage tuned (``after_lit``), the SigLIP stage's result, and the
    ``siglip/`` folder of the embedded model a fine-tuning round continues from (``finetune.init_from``),
    so a round keeps, and scores, the retrieval side it started from.
    """
    from napari_med3dvlm.model.loading import load_siglip

    from ..checks import has_result

    lit = result_dir(config, "lit") / SIGLIP_SUBFOLDER
    if after_lit and (lit / "config.json").is_file():
        model, tokenizer = load_siglip(str(lit), dtype=torch.float32)
        return model.eval(), tokenizer, "the lit stage"
    if has_result(config, "siglip"):
        model, tokenizer = build_siglip(config)
        own = {k.replace("vision_tower.", "vision_encoder.", 1): v for k, v in load_result(config, "siglip").items()}
        missing, unexpected = model.load_state_dict(own, strict=False)
        if unexpected or any(not k.startswith("language_encoder.") for k in missing):
            raise RuntimeError(f"SigLIP result does not match the model: {missing} {unexpected}")
        return model.eval(), tokenizer, "the siglip stage"
    source = (config.get("finetune") or {}).get("init_from")
    if source and (Path(source) / SIGLIP_SUBFOLDER / "config.json").is_file():
        model, tokenizer = load_siglip(str(Path(source) / SIGLIP_SUBFOLDER), dtype=torch.float32)
        return model.eval(), tokenizer, str(source)
    return None
