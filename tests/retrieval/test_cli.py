"""`napari-med3dvlm index` and `napari-med3dvlm search` end to end (a counting embedder stands in
for the model, so the test needs no weights)."""

import json

import pytest
from retrieval_toys import CountingEmbedder, make_collection

from napari_med3dvlm import cli
from napari_med3dvlm.retrieval import embedder as embedder_module


@pytest.fixture
def toy_model(monkeypatch):
    shared = CountingEmbedder()
    monkeypatch.setattr(embedder_module, "get_embedder", lambda source=None, device=None, dtype=None: shared)
    return shared


def test_index_then_search_from_the_command_line(tmp_path, collection, toy_model, capsys):
    db = tmp_path / "db"
    assert cli.main(["index", str(collection), "--db", str(db), "--batch-size", "2"]) == 0
    assert "6 embedded" in capsys.readouterr().out

    assert cli.main(["index", str(collection), "--db", str(db)]) == 0
    assert "0 embedded, 6 unchanged" in capsys.readouterr().out

    assert cli.main(["search", "round lesion in the liver", "--db", str(db), "-k", "3", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["rank"] for line in lines] == [1, 2, 3]
    assert lines[0]["score"] >= lines[1]["score"] >= lines[2]["score"]
    assert all(line["path"].startswith(str(collection.resolve())) for line in lines)

    target = sorted(collection.rglob("*.nii.gz"))[2]
    assert cli.main(["search", "--volume", str(target), "--db", str(db), "-k", "1"]) == 0
    out = capsys.readouterr().out
    assert str(target.resolve()) in out

    report = tmp_path / "report.txt"
    report.write_text("Findings: a hyperdense lesion.")
    assert cli.main(["search", "--report", str(report), "--db", str(db), "-k", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_search_without_an_index_says_how_to_build_one(tmp_path, toy_model, capsys):
    assert cli.main(["search", "anything", "--db", str(tmp_path / "missing")]) == 2
    assert "napari-med3dvlm index" in capsys.readouterr().err


def test_index_without_a_folder_refreshes_every_indexed_folder(tmp_path, collection, toy_model, capsys):
    db = tmp_path / "db"
    other = tmp_path / "other"
    make_collection(other, 2, start_seed=30)
    assert cli.main(["index", str(collection), "--db", str(db)]) == 0
    assert cli.main(["index", str(other), "--db", str(db)]) == 0
    capsys.readouterr()
    make_collection(other, 1, start_seed=40)
    before = toy_model.volumes_embedded
    assert cli.main(["index", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "collection: 6 volumes: 0 embedded" in out and "other: 3 volumes: 1 embedded" in out
    assert toy_model.volumes_embedded == before + 1
