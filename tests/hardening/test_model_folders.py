"""Damaged, foreign and hostile model folders: each is refused with one `ModelLoadError` whose single
line names the file and says what is wrong, or loads; the CLI turns a refusal into one line on stderr
and exit code 2; a folder's declared tokenizer class is the class that gets built.

The folders are made here from the tiny test model (nothing is stored in git).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_med3dvlm.model import ModelLoadError, PickleRefusedError, load_vlm, save_pretrained

MARKER = "pickle-was-executed"


class _Payload:
    """Unpickling this creates a marker file: the proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _sharded(folder: Path) -> list[Path]:
    """Re-save ``folder`` as shards + index; returns the shard paths."""
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(state)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(folder / shard), metadata={"format": "pt"})
        weight_map.update({k: shard for k in keys})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return [folder / s for s in shards]


def _index(folder: Path) -> dict:
    return json.loads((folder / "model.safetensors.index.json").read_text())


def _repoint_shard(folder: Path, new_name: str) -> None:
    index = _index(folder)
    old = "model-00002-of-00002.safetensors"
    index["weight_map"] = {k: (new_name if v == old else v) for k, v in index["weight_map"].items()}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def _edit_config(folder: Path, **values) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(values)
    (folder / "config.json").write_text(json.dumps(config))


# --------------------------------------------------------------------------- the damage
def truncated_weights(f):
    data = (f / "model.safetensors").read_bytes()
    (f / "model.safetensors").write_bytes(data[: len(data) // 2])


def weights_cut_in_header(f):
    (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:12])


def empty_weights(f):
    (f / "model.safetensors").write_bytes(b"")


def text_as_weights(f):
    (f / "model.safetensors").write_text("these are not the weights you are looking for\n" * 20)


def lfs_pointer_weights(f):
    (f / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 123456\n"
    )


def pickle_as_weights(f):
    (f / "model.safetensors").write_bytes(pickle.dumps(_Payload(f / MARKER)))


def only_pickled_weights(f):
    (f / "model.safetensors").unlink()
    (f / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(f / MARKER)))


def no_weights(f):
    (f / "model.safetensors").unlink()


def weights_is_a_folder(f):
    (f / "model.safetensors").unlink()
    (f / "model.safetensors").mkdir()


def wrong_tensor_shape(f):
    state = load_file(str(f / "model.safetensors"))
    name = next(k for k in sorted(state) if k.endswith("norm.weight"))
    state[name] = torch.zeros(state[name].shape[0] + 1)
    save_file(state, str(f / "model.safetensors"), metadata={"format": "pt"})


def no_config(f):
    (f / "config.json").unlink()


def garbage_config(f):
    (f / "config.json").write_bytes(os.urandom(64) + b"\xff\xfe")


def truncated_config(f):
    text = (f / "config.json").read_text()
    (f / "config.json").write_text(text[: len(text) // 2])


def list_config(f):
    (f / "config.json").write_text("[1, 2, 3]")


def string_hidden_size(f):
    _edit_config(f, hidden_size="32")


def negative_layers(f):
    _edit_config(f, num_hidden_layers=-2)


def bool_vocab_size(f):
    _edit_config(f, vocab_size=True)


def short_image_size(f):
    _edit_config(f, image_size=[32, 64])


def numeric_projector_type(f):
    _edit_config(f, mm_projector_type=7)


def heads_do_not_fit(f):
    _edit_config(f, num_attention_heads=8, num_key_value_heads=8)  # head_dim 4: other projection shapes


def unknown_model_type(f):
    _edit_config(f, model_type="llava")


def unknown_projector(f):
    _edit_config(f, mm_projector_type="transformer-xl")


def shard_parent_path(f):
    _sharded(f)
    shutil.move(f / "model-00002-of-00002.safetensors", f.parent / "outside.safetensors")
    _repoint_shard(f, "../outside.safetensors")


def shard_absolute_path(f):
    _sharded(f)
    target = f.parent / "elsewhere.safetensors"
    shutil.move(f / "model-00002-of-00002.safetensors", target)
    _repoint_shard(f, str(target.resolve()))


def shard_symlink_out(f):
    _sharded(f)
    target = f.parent / "linked-out.safetensors"
    shutil.move(f / "model-00002-of-00002.safetensors", target)
    (f / "model-00002-of-00002.safetensors").symlink_to(target)


def shard_in_linked_folder(f):
    _sharded(f)
    outside = f.parent / "outside-dir"
    outside.mkdir()
    shutil.move(f / "model-00002-of-00002.safetensors", outside / "model-00002-of-00002.safetensors")
    (f / "sub").symlink_to(outside, target_is_directory=True)
    _repoint_shard(f, "sub/model-00002-of-00002.safetensors")


def shard_pickle_named(f):
    _sharded(f)
    (f / "model-00002-of-00002.bin").write_bytes(pickle.dumps(_Payload(f / MARKER)))
    _repoint_shard(f, "model-00002-of-00002.bin")


def shard_missing(f):
    _sharded(f)[1].unlink()


def shard_truncated(f):
    shard = _sharded(f)[1]
    shard.write_bytes(shard.read_bytes()[:-7])


def garbage_index(f):
    _sharded(f)
    (f / "model.safetensors.index.json").write_text("{'weight_map': oops")


def index_without_map(f):
    _sharded(f)
    (f / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))


def index_map_not_names(f):
    _sharded(f)
    index = _index(f)
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = 3
    (f / "model.safetensors.index.json").write_text(json.dumps(index))


def no_tokenizer(f):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
        (f / name).unlink(missing_ok=True)


def garbage_tokenizer(f):
    (f / "tokenizer.json").write_text("{not json")


def tokenizer_class_not_a_name(f):
    config = json.loads((f / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = ["GPT2Tokenizer"]
    (f / "tokenizer_config.json").write_text(json.dumps(config))


# (case, damage, file named in the message, what the message says)
REFUSED = [
    ("truncated weights", truncated_weights, "model.safetensors", "truncated"),
    ("weights cut inside the header", weights_cut_in_header, "model.safetensors", "truncated"),
    ("empty weights", empty_weights, "model.safetensors", "not a readable safetensors file"),
    ("text saved as weights", text_as_weights, "model.safetensors", "not a readable safetensors file"),
    ("git lfs pointer", lfs_pointer_weights, "model.safetensors", "git lfs pull"),
    ("pickle named .safetensors", pickle_as_weights, "model.safetensors", "pickles are never loaded"),
    ("only pickled weights", only_pickled_weights, "pytorch_model.bin", "allow_pickle=True"),
    ("no weights", no_weights, "model.safetensors", "has no model.safetensors"),
    ("weights path is a folder", weights_is_a_folder, "model.safetensors", "not a regular file"),
    ("tensor of the wrong shape", wrong_tensor_shape, "model.safetensors", "shape mismatches"),
    ("no config.json", no_config, "config.json", "is missing"),
    ("garbage config.json", garbage_config, "config.json", "not utf-8"),
    ("truncated config.json", truncated_config, "config.json", "not valid json"),
    ("config.json is a list", list_config, "config.json", "not an object"),
    ("hidden_size is a string", string_hidden_size, "config.json", "hidden_size is '32', not a positive integer"),
    ("negative layer count", negative_layers, "config.json", "num_hidden_layers is -2"),
    ("vocab_size is a boolean", bool_vocab_size, "config.json", "vocab_size is true"),
    ("image_size has two values", short_image_size, "config.json", "image_size is [32, 64], not a list of 3"),
    ("projector type is a number", numeric_projector_type, "config.json", "not a string"),
    ("heads do not fit the weights", heads_do_not_fit, "model.safetensors", "does not match the model"),
    ("not a med3dvlm model type", unknown_model_type, "config.json", "is not a med3dvlm model"),
    ("unknown projector", unknown_projector, "config.json", "cannot be built"),
    ("shard index points to ../", shard_parent_path, "model.safetensors.index.json", "outside the model folder"),
    ("shard index absolute path", shard_absolute_path, "model.safetensors.index.json", "outside the model folder"),
    ("shard is a symlink out", shard_symlink_out, "model.safetensors.index.json", "link to a file outside"),
    ("shard under a linked folder", shard_in_linked_folder, "model.safetensors.index.json", "link to a file outside"),
    ("shard index names a pickle", shard_pickle_named, "model.safetensors.index.json", "not a .safetensors file"),
    ("listed shard missing", shard_missing, "model-00002-of-00002.safetensors", "download looks incomplete"),
    ("shard truncated", shard_truncated, "model-00002-of-00002.safetensors", "truncated"),
    ("garbage shard index", garbage_index, "model.safetensors.index.json", "not valid json"),
    ("shard index without weight_map", index_without_map, "model.safetensors.index.json", "no weight_map"),
    ("shard index maps to a number", index_map_not_names, "model.safetensors.index.json", "not a file name"),
    ("no tokenizer files", no_tokenizer, "tiny", "tokenizer files cannot be read"),
    ("garbage tokenizer.json", garbage_tokenizer, "tiny", "tokenizer files cannot be read"),
    ("tokenizer_class is a list", tokenizer_class_not_a_name, "tokenizer_config.json", "not a class name"),
]


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """The tiny model as loaded from the intact folder, and a prompt to compare logits on."""
    model, tokenizer = load_vlm(tiny_model_dir)
    ids = tokenizer("<im_patch>" * 12 + " Which organ has a mass?", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return ids, logits


def _copy(tiny_model_dir, tmp_path) -> Path:
    folder = tmp_path / "models" / "tiny"
    shutil.copytree(tiny_model_dir, folder)
    return folder


@pytest.mark.parametrize("case,damage,named,says", REFUSED, ids=[c[0] for c in REFUSED])
def test_damaged_folder_is_refused_with_one_clear_line(case, damage, named, says, tiny_model_dir, tmp_path):
    folder = _copy(tiny_model_dir, tmp_path)
    damage(folder)
    with pytest.raises(ModelLoadError) as info:
        load_vlm(folder)
    message = str(info.value)
    assert "\n" not in message, message
    assert named in message, message
    assert says.lower() in message.lower(), message
    assert not (folder / MARKER).exists(), "a pickle was executed"


def test_only_pickled_weights_keeps_its_own_error_type(tiny_model_dir, tmp_path):
    folder = _copy(tiny_model_dir, tmp_path)
    only_pickled_weights(folder)
    with pytest.raises(PickleRefusedError):
        load_vlm(folder)
    assert not (folder / MARKER).exists()


# --------------------------------------------------------------------------- what must load
def same_folder_link(f):
    """A shard that is a symbolic link to a file inside the folder."""
    _sharded(f)
    (f / "blobs").mkdir()
    shutil.move(f / "model-00002-of-00002.safetensors", f / "blobs" / "second")
    (f / "model-00002-of-00002.safetensors").symlink_to(Path("blobs") / "second")


def sharded_in_subfolder(f):
    _sharded(f)
    (f / "weights").mkdir()
    shutil.move(f / "model-00002-of-00002.safetensors", f / "weights" / "model-00002-of-00002.safetensors")
    _repoint_shard(f, "weights/model-00002-of-00002.safetensors")


LOADS = [("intact", lambda f: None), ("sharded", _sharded), ("shard linked inside the folder", same_folder_link),
         ("shard in a subfolder", sharded_in_subfolder)]


@pytest.mark.parametrize("case,change", LOADS, ids=[c[0] for c in LOADS])
def test_sound_folder_loads_the_same_model(case, change, tiny_model_dir, tmp_path, reference):
    folder = _copy(tiny_model_dir, tmp_path)
    change(folder)
    model, _ = load_vlm(folder)
    ids, logits = reference
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, logits)


def test_hub_cache_snapshot_with_links_into_blobs_loads(tiny_model_dir, tmp_path, reference):
    """Files of a Hugging Face cache snapshot are links to ../../blobs: that layout stays loadable."""
    repo = tmp_path / "hub" / "models--someone--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    staged = _copy(tiny_model_dir, tmp_path)
    _sharded(staged)
    for number, path in enumerate(sorted(staged.iterdir())):
        blob = repo / "blobs" / f"blob{number:03d}"
        shutil.move(path, blob)
        (snapshot / path.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    model, _ = load_vlm(snapshot)
    ids, logits = reference
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, logits)


# --------------------------------------------------------------------------- through the CLI
@pytest.fixture
def nifti_path(tmp_path, ct_volume):
    path = tmp_path / "inputs" / "ct.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(np.ascontiguousarray(ct_volume.transpose(2, 1, 0)), np.diag([0.8, 0.8, 2.5, 1.0])), str(path))
    return path


CLI_CASES = [c for c in REFUSED if c[0] in ("truncated weights", "garbage config.json", "shard index points to ../")]


@pytest.mark.parametrize("case,damage,named,says", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_report_cli_prints_one_line_and_exits_2(case, damage, named, says, tiny_model_dir, tmp_path, nifti_path,
                                                config_dir, capsys):
    from napari_med3dvlm.cli import main

    folder = _copy(tiny_model_dir, tmp_path)
    damage(folder)
    code = main(["report", str(nifti_path), "--out", str(tmp_path / "out"), "--model", str(folder), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert named in lines[0] and says.lower() in lines[0].lower()
    assert "Traceback" not in captured.err + captured.out


# --------------------------------------------------------------------------- the declared tokenizer class
def test_declared_tokenizer_class_is_built_not_the_llm_default(tmp_path):
    """A Qwen2 model whose folder declares a GPT-2 tokenizer gets the GPT-2 tokenizer: Qwen2's
    tokenizer NFC-normalises "e" + combining acute into one character, GPT-2's does not."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Tokenizer, Qwen2Config, Qwen2Tokenizer

    from napari_med3dvlm.model.configuration import Med3DVLMConfig
    from napari_med3dvlm.model.vlm import Med3DVLMForCausalLM

    source = tmp_path / "tokenizer"
    source.mkdir()
    bpe = ByteLevelBPETokenizer()
    texts = ["The café shows a naïve résumé of the liver.", "No lesion is seen in the kidney."] * 4
    bpe.train_from_iterator(texts, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>", "<|im_end|>"])
    bpe.save_model(str(source))
    tokenizer = GPT2Tokenizer.from_pretrained(
        str(source), eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None, unk_token=None,
        additional_special_tokens=["<im_patch>"],
    )
    text = Qwen2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tokenizer), tie_word_embeddings=False, eos_token_id=1, pad_token_id=0, bos_token_id=None,
        max_position_embeddings=128,
    )
    config = Med3DVLMConfig(
        text_config=text, vision_variant="nano", image_size=(32, 64, 64), mm_hidden_size=256,
        low_input_size=(4, 128), high_input_size=(1, 256), low_output_size=(6, 4), high_output_size=(2, 4),
        proj_out_num=8,
    )
    torch.manual_seed(0)
    folder = save_pretrained(Med3DVLMForCausalLM(config).eval(), tokenizer, tmp_path / "published")
    declared = json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"]
    assert declared.removesuffix("Fast") == "GPT2Tokenizer"
    assert json.loads((folder / "config.json").read_text())["model_type"] == "vlm_qwen"

    _, loaded = load_vlm(folder)
    assert type(loaded).__name__ == "GPT2Tokenizer"
    decomposed = "e\u0301"
    qwen2 = Qwen2Tokenizer.from_pretrained(str(folder))
    assert loaded(decomposed)["input_ids"] == tokenizer(decomposed)["input_ids"]
    assert loaded(decomposed)["input_ids"] != qwen2(decomposed)["input_ids"]  # the ids would differ
    assert loaded.convert_tokens_to_ids("<im_patch>") == len(tokenizer) - 1
