"""The index store on its own: exact and ANN search agree, duplicates never survive, hits carry
what the results list shows."""

import numpy as np
import pytest

from napari_med3dvlm.retrieval import VolumeIndex

DIM = 16


def rows(vectors, start=0, root_id=0):
    return [
        {
            "key": f"{root_id}/case_{start + i:04d}.nii.gz",
            "root_id": root_id,
            "path": f"case_{start + i:04d}.nii.gz",
            "series": "",
            "content_hash": f"h{start + i}",
            "description": "",
            "modality": "CT",
            "shape": [4, 8, 8],
            "spacing": [1.0, 1.0, 1.0],
            "thumbnail": b"",
            "model_id": "m",
            "vector": v,
        }
        for i, v in enumerate(vectors)
    ]


def unit(rng, n):
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def index(tmp_path):
    index = VolumeIndex(tmp_path / "db", ann_threshold=300)
    index.set_model("m", DIM)
    index.root_id(tmp_path / "root")
    return index


def test_ann_search_agrees_with_exact_search(index):
    rng = np.random.default_rng(0)
    vectors = unit(rng, 400)
    index.upsert(rows(vectors))
    assert not index.uses_ann()
    index.maintain()  # past the threshold: builds the vector index
    assert index.uses_ann()

    agree = 0
    for target in range(0, 400, 40):
        query = vectors[target]
        ann = index.search(query, k=5)
        exact = index.search(query, k=5, exact=True)
        assert exact[0].key.endswith(f"case_{target:04d}.nii.gz")
        assert exact[0].score == pytest.approx(1.0, abs=1e-5)
        agree += ann[0].key == exact[0].key
        assert ann[0].score == pytest.approx(exact[0].score, abs=0.02)
    assert agree >= 9


def test_large_tables_get_a_key_index(index, monkeypatch):
    from napari_med3dvlm.retrieval import store

    monkeypatch.setattr(store, "KEY_INDEX_ROWS", 50)
    index.upsert(rows(unit(np.random.default_rng(4), 60)))
    index.maintain()
    assert any(list(i.columns) == ["key"] for i in index.table().list_indices())
    index.upsert(rows(unit(np.random.default_rng(5), 5)))  # upserts still replace by key
    assert len(index) == 60


def test_upserts_replace_rows_by_key(index):
    rng = np.random.default_rng(1)
    index.upsert(rows(unit(rng, 10)))
    replacement = unit(rng, 3)
    index.upsert(rows(replacement))  # same keys as the first three
    assert len(index) == 10
    hit = index.search(replacement[1], k=1)[0]
    assert hit.key == "0/case_0001.nii.gz" and hit.score == pytest.approx(1.0, abs=1e-5)


def test_duplicates_from_plain_appends_are_removed(index):
    rng = np.random.default_rng(2)
    batch = rows(unit(rng, 5))
    index.upsert(batch)
    index.table().add(batch[:2])  # as a crashed foreign writer might leave it
    assert len(index) == 7
    assert index.deduplicate() == 2
    keys = index.table().to_arrow()["key"].to_pylist()
    assert len(keys) == len(set(keys)) == 5


def test_hits_point_into_the_root_folder(index, tmp_path):
    index.upsert(rows(unit(np.random.default_rng(3), 4)))
    hit = index.search(np.eye(DIM, dtype=np.float32)[0], k=1)[0]
    assert hit.path.parent == (tmp_path / "root").resolve()
    assert hit.shape == (4, 8, 8) and hit.modality == "CT"


def test_two_handles_on_one_index_keep_each_others_roots(tmp_path):
    first, second = VolumeIndex(tmp_path / "db"), VolumeIndex(tmp_path / "db")  # e.g. the dock and a CLI run
    a = first.root_id(tmp_path / "a")
    b = second.root_id(tmp_path / "b")
    assert a != b
    assert set(first.roots.values()) == {(tmp_path / "a").resolve(), (tmp_path / "b").resolve()}
