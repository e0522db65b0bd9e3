"""One answer to "which model, from where": the embedded names, the hub-id and offline rules, the
published input size and the content fingerprint of a model's files."""

import os
from pathlib import Path

import pytest

from napari_med3dvlm import settings
from napari_med3dvlm.io import PUBLISHED_INPUT_SIZE
from napari_med3dvlm.model import sources


def test_every_embedded_spelling_is_one_kind():
    assert settings.EMBEDDED == sources.EMBEDDED  # settings may not import model (layers): kept equal here
    for source in sources.EMBEDDED_SOURCES:
        assert sources.source_kind(source) == "embedded"
        assert sources.display_model_id(source) == "embedded"
    assert sources.source_kind("someone/some-model") == "hub"
    assert sources.source_kind("./someone/some-model") == "folder"


@pytest.mark.parametrize(
    ("hub", "transformers", "default", "expected"),
    [(None, None, False, False), (None, None, True, True), ("1", None, False, True), (None, "yes", False, True),
     (" ON ", None, False, True), ("0", None, True, False), ("0", "1", True, True)],
)
def test_one_offline_rule(monkeypatch, hub, transformers, default, expected):
    for name, value in (("HF_HUB_OFFLINE", hub), ("TRANSFORMERS_OFFLINE", transformers)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert sources.offline(default=default) is expected


def test_the_published_input_size_in_both_orders():
    from napari_med3dvlm.model.configuration import PASSTHROUGH_FIELDS, VISION_DEFAULTS, from_reference_order

    assert VISION_DEFAULTS["image_size"] == PUBLISHED_INPUT_SIZE == (128, 256, 256)
    assert from_reference_order(PASSTHROUGH_FIELDS["input_size"]) == PUBLISHED_INPUT_SIZE


def test_the_fingerprint_is_contents_and_sizes_not_times(tmp_path):
    folder = tmp_path / "model"
    (folder / "siglip").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"a" * 1000)
    (folder / "siglip" / "model.safetensors").write_bytes(b"b" * 10)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    before = sources.content_fingerprint(files, root=folder)
    for path in files:
        os.utime(path, (1e9, 1e9))
    assert sources.content_fingerprint(files, root=folder) == before
    stat = files[0].stat()
    files[0].write_bytes(b"a" * 999 + b"c")  # same size, old time restored
    os.utime(files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert sources.content_fingerprint(files, root=folder) != before


def test_large_file_digests_survive_the_process_not_a_change_of_bytes(tmp_path, monkeypatch):
    """A weight file is hashed once per version and machine: a new process (the in-process memory
    emptied) reads the digest from the user cache; new bytes at the same size are hashed again."""
    from napari_med3dvlm.model import sources

    monkeypatch.setenv("NAPARI_MED3DVLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "PERSIST_DIGESTS_FROM", 0)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 1000)
    first = sources.file_digest(weights)
    assert (tmp_path / "cache" / "digests.json").is_file()

    monkeypatch.setattr(sources, "_digests", {})  # a new process
    real_open = open

    def no_reading(path, *args, **kwargs):
        assert Path(path) != weights, "hashed again"
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_reading)
    assert sources.file_digest(weights) == first
    monkeypatch.setattr("builtins.open", real_open)

    weights.write_bytes(b"b" * 1000)  # same size, new bytes (and a new change time)
    assert sources.file_digest(weights) != first
