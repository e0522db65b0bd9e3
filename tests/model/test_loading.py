"""Checkpoints in the published layout: save, load, generate, stream, and refuse what is unsafe."""

import json
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import ByteLevelBPETokenizer
from transformers import AutoTokenizer, Qwen2Config, TextIteratorStreamer

from napari_med3dvlm.model import load_vlm, loading
from napari_med3dvlm.model.configuration import Med3DVLMConfig
from napari_med3dvlm.model.loading import (
    CheckpointMismatchError,
    ModelNotAvailableError,
    PickleRefusedError,
    save_pretrained,
)
from napari_med3dvlm.model.vlm import Med3DVLMForCausalLM, StopOnEvent

IMAGE_SIZE = (32, 64, 64)
SENTENCES = [
    "The liver is normal in size. No focal lesion is seen.",
    "What organ has a mass? The left kidney.",
    "Axial CT of the abdomen with contrast, portal venous phase.",
]


def write_published_tokenizer(folder):
    """A tiny byte-level BPE in the published slow-tokenizer layout, with <im_patch> added."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SENTENCES * 4, vocab_size=320, min_frequency=1, special_tokens=["<|endoftext|>", "<|im_end|>"])
    bpe.save_model(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "bos_token": None, "unk_token": None, "model_max_length": 512,
        "additional_special_tokens": ["<im_patch>"],
    }))
    (folder / "added_tokens.json").write_text(json.dumps({"<im_patch>": bpe.get_vocab_size()}))
    return AutoTokenizer.from_pretrained(str(folder), config=Qwen2Config())


def tiny_config(vocab_size):
    text = Qwen2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab_size, tie_word_embeddings=False,
        eos_token_id=1, pad_token_id=0, bos_token_id=None, max_position_embeddings=256,
    )
    return Med3DVLMConfig(
        text_config=text, vision_variant="nano", image_size=IMAGE_SIZE, mm_hidden_size=256,
        low_input_size=(4, 128), high_input_size=(1, 256), low_output_size=(6, 4),
        high_output_size=(2, 4), proj_out_num=8,
    )


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """(folder, original model, tokenizer): a tiny model written in the published sharded layout."""
    folder = tmp_path_factory.mktemp("published")
    tokenizer = write_published_tokenizer(folder)
    torch.manual_seed(0)
    model = Med3DVLMForCausalLM(tiny_config(len(tokenizer))).eval()
    save_pretrained(model, tokenizer, folder, max_shard_size="150KB")
    return folder, model, tokenizer


def prompt_ids(tokenizer, question=" What organ has a mass?", n_image=8):
    return tokenizer("<im_patch>" * n_image + question, return_tensors="pt").input_ids


def volume(seed=1):
    return torch.rand((1, 1, *IMAGE_SIZE), generator=torch.Generator().manual_seed(seed))


def test_written_layout_is_the_published_one(published):
    folder, _, _ = published
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "vlm_qwen" and config["architectures"] == ["VLMQwenForCausalLM"]
    assert config["proj_out_num"] == 8 and config["vision_variant"] == "nano"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((folder / s).is_file() for s in shards)
    assert shards[0].startswith("model-00001-of-")
    keys = set(index["weight_map"])
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" in keys
    assert "model.vision_tower.vision_tower.encoder.s0.0.0.c1.0.weight" in keys
    assert "model.mm_projector.low_mixer.0.ln1.weight" in keys
    assert not any(k.startswith(("vision_tower.", "language_model.")) for k in keys)


def test_load_gives_identical_logits(published):
    folder, original, tokenizer = published
    model, loaded_tokenizer = load_vlm(folder)
    assert len(loaded_tokenizer) == len(tokenizer)
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<im_patch>")
    ids, images = prompt_ids(tokenizer), volume()
    with torch.no_grad():
        expected = original(input_ids=ids, images=images).logits
        got = model(input_ids=ids, images=images).logits
    assert torch.equal(expected, got)
    # BatchNorm statistics came from the file, and the model is ready for inference
    assert not model.training
    assert torch.equal(model.vision_tower.encoder.s0[0][0].c1[1].running_var, original.vision_tower.encoder.s0[0][0].c1[1].running_var)


def test_save_load_round_trip_again_is_identical(published, tmp_path):
    folder, original, tokenizer = published
    model, tok = load_vlm(folder)
    save_pretrained(model, tok, tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").is_file()  # small enough for one shard
    again, _ = load_vlm(tmp_path / "again")
    ids, images = prompt_ids(tokenizer), volume(2)
    with torch.no_grad():
        assert torch.equal(original(input_ids=ids, images=images).logits, again(input_ids=ids, images=images).logits)


def test_greedy_generate_returns_new_tokens_and_streams(published):
    folder, original, tokenizer = published
    model, tokenizer = load_vlm(folder)
    ids, images = prompt_ids(tokenizer), volume()
    out = model.generate(input_ids=ids, images=images, max_new_tokens=6, do_sample=False)
    reference = original.generate(input_ids=ids, images=images, max_new_tokens=6, do_sample=False)
    assert torch.equal(out, reference)
    assert 1 <= out.shape[1] <= 6 and out.shape[0] == 1  # only new tokens, not the prompt

    features = model.encode_images(images)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=30)
    worker = threading.Thread(
        target=model.generate,
        kwargs=dict(input_ids=ids, image_features=features, max_new_tokens=6, do_sample=False, streamer=streamer),
    )
    worker.start()
    streamed = "".join(streamer)
    worker.join()
    assert streamed == tokenizer.decode(out[0], skip_special_tokens=True)


def test_stop_event_cancels_generation(published):
    _, model, tokenizer = published
    stop = StopOnEvent()
    stop.event.set()
    out = model.generate(
        input_ids=prompt_ids(tokenizer), images=volume(), max_new_tokens=20, do_sample=False,
        min_new_tokens=0, stopping_criteria=[stop],
    )
    assert out.shape[1] <= 1


def test_bf16_checkpoint_loads_in_requested_dtypes(published, tmp_path):
    folder, original, tokenizer = published
    model, tok = load_vlm(folder)
    save_pretrained(model.to(torch.bfloat16), tok, tmp_path / "bf16")
    shard = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    assert shard["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert shard["model.vision_tower.vision_tower.encoder.s0.0.0.c1.1.num_batches_tracked"].dtype == torch.int64
    as_fp32, _ = load_vlm(tmp_path / "bf16")  # CPU default: float32
    assert as_fp32.language_model.get_input_embeddings().weight.dtype == torch.float32
    as_bf16, _ = load_vlm(tmp_path / "bf16", dtype=torch.bfloat16)
    assert as_bf16.mm_projector_dtype == torch.bfloat16
    with torch.no_grad():
        logits = as_bf16(input_ids=prompt_ids(tok), images=volume()).logits
    assert torch.isfinite(logits.float()).all()


def test_wrong_keys_are_all_named(published, tmp_path):
    folder, original, tokenizer = published
    bad = tmp_path / "bad"
    save_pretrained(original, tokenizer, bad)
    state = load_file(str(bad / "model.safetensors"))
    del state["model.norm.weight"]
    del state["model.mm_projector.high_mixer.1.ln2.bias"]
    state["model.extra_head.weight"] = torch.zeros(2)
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError) as err:
        load_vlm(bad)
    message = str(err.value)
    for key in ("model.norm.weight", "model.mm_projector.high_mixer.1.ln2.bias", "model.extra_head.weight"):
        assert key in message
    assert err.value.missing == ["model.mm_projector.high_mixer.1.ln2.bias", "model.norm.weight"]


def test_pickled_weights_are_refused_by_default(published, tmp_path):
    folder, original, tokenizer = published
    pickled = tmp_path / "pickled"
    save_pretrained(original, tokenizer, pickled)
    state = load_file(str(pickled / "model.safetensors"))
    (pickled / "model.safetensors").unlink()
    torch.save(state, pickled / "pytorch_model.bin")
    with pytest.raises(PickleRefusedError, match="allow_pickle"):
        load_vlm(pickled)
    model, _ = load_vlm(pickled, allow_pickle=True)  # explicit opt-in, still weights_only
    ids = prompt_ids(tokenizer)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, original(input_ids=ids).logits)


def test_hub_id_offline_points_to_settings(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="Settings"):
        load_vlm("MagicXin/Med3DVLM-Qwen-2.5-7B")


def test_missing_demo_model_says_how_to_train(monkeypatch, tmp_path):
    monkeypatch.setattr(loading, "DEMO_FOLDER", tmp_path / "demo")
    with pytest.raises(ModelNotAvailableError, match="training.run"):
        load_vlm("embedded")


def test_tied_llama_language_model_round_trips(tmp_path):
    from transformers import LlamaConfig

    text = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=60, tie_word_embeddings=True,
    )
    config = tiny_config(60)
    config.text_config = text
    torch.manual_seed(0)
    model = Med3DVLMForCausalLM(config).eval()
    tokenizer = write_published_tokenizer(tmp_path / "tok") if (tmp_path / "tok").mkdir() is None else None
    save_pretrained(model, tokenizer, tmp_path / "llama")
    saved = json.loads((tmp_path / "llama" / "config.json").read_text())
    assert saved["model_type"] == "vlm_llama"
    assert "lm_head.weight" not in load_file(str(tmp_path / "llama" / "model.safetensors"))
    loaded, _ = load_vlm(tmp_path / "llama")
    head = loaded.language_model.get_output_embeddings().weight
    assert head is loaded.language_model.get_input_embeddings().weight
    ids = torch.randint(0, 60, (1, 12))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
