"""The VLM wrapper: image features, the positional splice, loss and generation."""

import pytest
import torch
from transformers import LlamaConfig

from napari_med3dvlm.model.configuration import Med3DVLMConfig
from napari_med3dvlm.model.vlm import Med3DVLMForCausalLM

IMAGE_SIZE = (32, 64, 64)
N_IMAGE = 8


@pytest.fixture(scope="module")
def model():
    text = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=50, tie_word_embeddings=True, eos_token_id=2, pad_token_id=0,
    )
    config = Med3DVLMConfig(
        text_config=text, vision_variant="nano", image_size=IMAGE_SIZE, mm_hidden_size=256,
        low_input_size=(4, 128), high_input_size=(1, 256), low_output_size=(6, 4),
        high_output_size=(2, 4), proj_out_num=N_IMAGE,
    )
    torch.manual_seed(0)
    return Med3DVLMForCausalLM(config).eval()


def ids(length=14, batch=1):
    return torch.randint(3, 50, (batch, length), generator=torch.Generator().manual_seed(length))


def test_config_defaults_are_the_published_model():
    config = Med3DVLMConfig()
    assert config.vision_tower == "dcformer" and config.vision_variant == "small"
    assert config.image_size == (128, 256, 256) and config.proj_out_num == 256
    assert config.image_token == "<im_patch>"
    assert config.text_config.model_type == "qwen2"


def test_encode_images_gives_proj_out_num_embeddings(model):
    images = torch.rand(2, 1, *IMAGE_SIZE)
    features = model.encode_images(images)
    assert features.shape == (2, N_IMAGE, 32)


def test_wrong_axis_order_is_an_error(model):
    with pytest.raises(ValueError, match="D, H, W"):
        model.encode_images(torch.rand(1, 1, 64, 64, 32))


def test_splice_is_positional(model):
    input_ids = ids()
    features = torch.randn(1, N_IMAGE, 32)
    tokens = model.language_model.get_input_embeddings()(input_ids)
    spliced = model.prepare_inputs_embeds(input_ids, features)
    assert spliced.shape == tokens.shape  # sequence length unchanged
    assert torch.equal(spliced[:, 0], tokens[:, 0])  # first <im_patch> embedding kept
    assert torch.equal(spliced[:, 1 : 1 + N_IMAGE], features)  # image at 1..N
    assert torch.equal(spliced[:, 1 + N_IMAGE :], tokens[:, 1 + N_IMAGE :])  # token N itself is overwritten
    assert model.prepare_inputs_embeds(input_ids, None).equal(tokens)


def test_splice_broadcasts_one_volume_over_a_batch(model):
    input_ids = ids(batch=3)
    spliced = model.prepare_inputs_embeds(input_ids, torch.ones(1, N_IMAGE, 32))
    assert torch.equal(spliced[:, 1 : 1 + N_IMAGE], torch.ones(3, N_IMAGE, 32))


def test_prompt_shorter_than_the_image_is_rejected(model):
    with pytest.raises(ValueError, match="<im_patch>"):
        model.prepare_inputs_embeds(ids(length=N_IMAGE), torch.zeros(1, N_IMAGE, 32))


def test_loss_trains_projector_and_vision_tower(model):
    model.train()
    try:
        input_ids = ids(batch=2)
        labels = input_ids.clone()
        labels[:, : 1 + N_IMAGE] = -100
        out = model(input_ids=input_ids, images=torch.rand(2, 1, *IMAGE_SIZE), labels=labels)
        assert torch.isfinite(out.loss)
        out.loss.backward()
        assert model.mm_projector.low_mixer[0].ln1.weight.grad is not None
        assert next(model.vision_tower.parameters()).grad is not None
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_generate_from_images_or_features_is_the_same(model):
    input_ids = ids()
    images = torch.rand(1, 1, *IMAGE_SIZE)
    from_images = model.generate(input_ids=input_ids, images=images, max_new_tokens=4, do_sample=False)
    from_features = model.generate(
        input_ids=input_ids, image_features=model.encode_images(images), max_new_tokens=4, do_sample=False
    )
    assert torch.equal(from_images, from_features)
    assert from_images.shape[1] <= 4  # new tokens only
    with pytest.raises(ValueError, match="not both"):
        model.generate(input_ids=input_ids, images=images, image_features=model.encode_images(images))
