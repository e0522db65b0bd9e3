"""The LLM stages' loss: the output head only where a label is, and nothing else changed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from training.stages.lm_loss import LabelledLossVLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))
from tiny_vlm import IMAGE_SIZE, PROJ_OUT_NUM, tiny_vlm  # noqa: E402


def _batch(model, tokenizer, seed: int = 0):
    """Two samples of different lengths, right-padded: image positions, a prompt, a labelled answer."""
    g = torch.Generator().manual_seed(seed)
    image_id, vocab = model.config.image_token_id, len(tokenizer) - 1
    rows, labels = [], []
    for prompt_len, answer_len, pad in ((6, 9, 0), (4, 3, 8)):
        prompt = [5] + [image_id] * PROJ_OUT_NUM + torch.randint(10, vocab - 2, (prompt_len,), generator=g).tolist()
        answer = torch.randint(10, vocab - 2, (answer_len,), generator=g).tolist()
        rows.append(prompt + answer + [tokenizer.pad_token_id] * pad)
        labels.append([-100] * len(prompt) + answer + [-100] * pad)
    ids = torch.tensor(rows)
    mask = (torch.tensor(labels) != -100) | (ids != tokenizer.pad_token_id)
    return ids, mask.long(), torch.tensor(labels)


@pytest.mark.parametrize("with_lora", [False, True])
def test_loss_and_gradients_equal_the_full_head(with_lora):
    model, tokenizer = tiny_vlm(seed=1)
    model.train()
    if with_lora:
        model.language_model = get_peft_model(
            model.language_model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
        )
    ids, mask, labels = _batch(model, tokenizer)
    images = torch.rand(2, 1, *IMAGE_SIZE, generator=torch.Generator().manual_seed(2))
    params = [p for p in model.parameters() if p.requires_grad]

    reference = model(input_ids=ids, images=images, attention_mask=mask, labels=labels).loss  # every position
    expected = torch.autograd.grad(reference, params, allow_unused=True)
    loss = LabelledLossVLM(model)(input_ids=ids, attention_mask=mask, labels=labels, images=images)
    got = torch.autograd.grad(loss, params, allow_unused=True)

    assert loss.item() == pytest.approx(reference.item(), rel=1e-6, abs=1e-6)
    for a, b in zip(expected, got):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_cached_encoder_tokens_give_the_same_loss_as_volumes():
    model, tokenizer = tiny_vlm(seed=3)
    ids, mask, labels = _batch(model, tokenizer, seed=4)
    images = torch.rand(2, 1, *IMAGE_SIZE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        low, high = model.select_image_tokens(model.vision_tower(images))
        wrapped = LabelledLossVLM(model)
        from_volumes = wrapped(input_ids=ids, attention_mask=mask, labels=labels, images=images)
        from_tokens = wrapped(input_ids=ids, attention_mask=mask, labels=labels, vision_low=low, vision_high=high)
    assert from_tokens.item() == pytest.approx(from_volumes.item(), rel=1e-6)


def test_a_batch_with_every_answer_cut_off_gives_zero_not_nan():
    model, tokenizer = tiny_vlm(seed=0)
    ids, mask, labels = _batch(model, tokenizer)
    loss = LabelledLossVLM(model)(input_ids=ids, attention_mask=mask, labels=torch.full_like(labels, -100),
                                  images=torch.rand(2, 1, *IMAGE_SIZE))
    assert loss.item() == 0.0 and loss.requires_grad
