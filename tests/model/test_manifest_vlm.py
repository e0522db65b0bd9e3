"""The full 7B Med3DVLM, built with empty weights, has exactly the published checkpoint's tensors."""

import json
from pathlib import Path

import pytest
from accelerate import init_empty_weights

from napari_med3dvlm.model.configuration import Med3DVLMConfig
from napari_med3dvlm.model.loading import published_state_dict
from napari_med3dvlm.model.vlm import Med3DVLMForCausalLM

MANIFEST = Path(__file__).resolve().parents[1] / "fixtures" / "manifests" / "manifest_vlm_qwen2.5_7b_meta.json"


@pytest.fixture(scope="module")
def manifest():
    return json.loads(MANIFEST.read_text())


@pytest.fixture(scope="module")
def meta_model(manifest):
    config = Med3DVLMConfig.from_published_dict(manifest["config_json_expected(inferred)"])
    with init_empty_weights():
        return Med3DVLMForCausalLM(config)


def test_published_config_is_read_without_remote_code(manifest):
    config = Med3DVLMConfig.from_published_dict(manifest["config_json_expected(inferred)"])
    text = config.text_config
    assert text.model_type == "qwen2"
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (3584, 18944, 28)
    assert (text.num_attention_heads, text.num_key_value_heads, text.vocab_size) == (28, 4, 151666)
    assert text.tie_word_embeddings is False
    assert config.proj_out_num == 256 and config.mm_projector_type == "mixer"
    assert config.low_input_size == (256, 384) and config.high_input_size == (32, 768)
    assert config.vision_select_layer == -2 and config.image_token == "<im_patch>"
    # and it writes back the flat published form
    published = config.to_published_dict()
    assert published["model_type"] == "vlm_qwen"
    assert published["architectures"] == ["VLMQwenForCausalLM"]
    assert published["hidden_size"] == 3584 and published["low_output_size"] == [192, 128]


def test_unknown_model_type_is_rejected():
    with pytest.raises(ValueError, match="vlm_qwen"):
        Med3DVLMConfig.from_published_dict({"model_type": "llava"})


def test_meta_model_has_the_813_published_keys_and_shapes(meta_model, manifest):
    ours = {k: list(v.shape) for k, v in published_state_dict(meta_model).items()}
    expected = {k: v["shape"] for k, v in manifest["state_dict"].items()}
    assert len(ours) == manifest["num_entries"] == 813
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    assert ours == expected


def test_meta_model_parameter_counts(meta_model, manifest):
    counts = manifest["param_counts"]

    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert count(meta_model.vision_tower) == counts["vision_tower"]
    assert count(meta_model.mm_projector) == counts["mm_projector"]
    assert count(meta_model.language_model) == counts["llm"]
    assert count(meta_model) == counts["total_params"]
    # nothing was materialised
    assert meta_model.language_model.get_input_embeddings().weight.is_meta
