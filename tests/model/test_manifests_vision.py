"""Our modules must expose exactly the state-dict layout of the published Med3DVLM checkpoints."""

import json
from pathlib import Path

import torch

from napari_med3dvlm.model.dcformer import DCFormer, DCFormerConfig
from napari_med3dvlm.model.projector import MixerProjector

MANIFESTS = Path(__file__).resolve().parent.parent / "fixtures" / "manifests"


def _manifest(name):
    return json.loads((MANIFESTS / name).read_text())


def _shapes(module):
    return {key: list(value.shape) for key, value in module.state_dict().items()}


def test_dcformer_small_matches_published_encoder_layout():
    manifest = _manifest("manifest_dcformer_small.json")
    with torch.device("meta"):
        model = DCFormer(DCFormerConfig(variant="small"))
    assert _shapes(model) == manifest["state_dict"]
    assert len(model.state_dict()) == manifest["num_state_dict_entries"]
    assert sum(len(list(m.buffers(recurse=False))) for m in model.modules()) == manifest["num_buffers_entries"]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]
    with torch.device("meta"):
        tokens = model(torch.empty(manifest["input_BCDHW"]))
    assert [list(t.shape) for t in tokens] == manifest["hidden_states_tokens_B_N_C"]


def test_mixer_for_7b_llm_matches_published_projector_layout():
    manifest = _manifest("manifest_mixer_projector.json")
    with torch.device("meta"):
        model = MixerProjector(
            low_input_size=(256, 384),
            high_input_size=(32, 768),
            low_output_size=[192, 128],
            high_output_size=[64, 128],
            output_dim=3584,
        )
        out = model(*[torch.empty(s) for s in manifest["vision_tower_features_for_input_1x1x128x256x256"]])
    assert _shapes(model) == manifest["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]
    assert list(out.shape) == manifest["output_shape"]


def test_vlm_checkpoint_vision_keys_are_prefixed_copies_of_ours():
    manifest = _manifest("manifest_vlm_qwen2.5_7b_meta.json")
    published = manifest["state_dict"]
    with torch.device("meta"):
        encoder = DCFormer(DCFormerConfig(variant="small"))
        projector = MixerProjector(output_dim=3584)
    ours = {f"model.vision_tower.vision_tower.{k}": v for k, v in _shapes(encoder).items()}
    ours.update({f"model.mm_projector.{k}": v for k, v in _shapes(projector).items()})
    theirs = {
        k: v["shape"] for k, v in published.items() if k.startswith(("model.vision_tower.", "model.mm_projector."))
    }
    assert ours == theirs


def test_dec_clip_non_text_keys_match_published_siglip_layout():
    from transformers import DistilBertConfig

    from napari_med3dvlm.model.siglip import SigLIPConfig, SigLIPModel

    manifest = _manifest("manifest_dec_clip.json")
    config = SigLIPConfig.from_dict(manifest["config_to_dict"])
    small_text = DistilBertConfig(vocab_size=100, dim=768, n_layers=1, n_heads=12, hidden_dim=64)
    config.text_config = small_text.to_dict()
    with torch.device("meta"):
        model = SigLIPModel(config)
    ours = {k: v for k, v in _shapes(model).items() if not k.startswith("language_encoder.")}
    assert ours == manifest["state_dict_non_text_encoder"]
    assert model.config.t_prime == manifest["init_values"]["t_prime"]
    assert model.config.hidden_size == 768


def test_dec_clip_default_text_encoder_has_published_key_layout():
    from napari_med3dvlm.model.siglip import SigLIPConfig, SigLIPModel

    manifest = _manifest("manifest_dec_clip.json")
    with torch.device("meta"):
        model = SigLIPModel(SigLIPConfig.from_dict(manifest["config_to_dict"]))
    keys = set(model.state_dict())
    text_keys = {k for k in keys if k.startswith("language_encoder.")}
    assert len(keys) == manifest["num_state_dict_entries"]
    assert len(text_keys) == manifest["num_language_encoder_entries"]
    assert {k for k in manifest["language_encoder_key_examples"] if k != "..."} <= text_keys
