"""A tiny, randomly initialised Med3DVLM (nano DCFormer, 2-layer Llama) and a byte-level tokenizer
trained in memory: fast enough to build per test session, with the real model classes.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, PreTrainedTokenizerFast

from napari_med3dvlm.model.prompts import IMAGE_TOKEN, REPORT_TEMPLATES
from napari_med3dvlm.model.configuration import Med3DVLMConfig
from napari_med3dvlm.model.vlm import Med3DVLMForCausalLM

IMAGE_SIZE = (32, 64, 64)  # nano DCFormer: s3 = 1x2x2 tokens x 128, s4 = 1 token x 256
PROJ_OUT_NUM = 12

CORPUS = list(REPORT_TEMPLATES) + [
    "The liver is enlarged with a hypodense lesion in the right lobe.",
    "No free fluid. The kidneys and spleen are unremarkable.",
    "A round mass is seen in the left kidney. Which organ has a mass?",
    "What is the plane of this image? Axial, coronal, sagittal.",
]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_end|>", IMAGE_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[IMAGE_TOKEN],
        model_max_length=256,
    )


def tiny_vlm(seed: int = 0):
    """(model, tokenizer) in eval mode."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    config = Med3DVLMConfig(
        text_config=text_config,
        vision_variant="nano",
        image_size=IMAGE_SIZE,
        low_input_size=(4, 128),
        high_input_size=(1, 256),
        low_output_size=(8, 8),
        high_output_size=(4, 4),
        proj_out_num=PROJ_OUT_NUM,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
    )
    model = Med3DVLMForCausalLM(config).eval()
    return model, tokenizer
