"""Indexed volumes outside what the model knows are marked in their index row and in search hits;
an index written before the check existed still opens, its rows marked as not checked."""

import sys
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval_toys import CountingEmbedder, make_collection, write_nifti  # noqa: E402

from napari_med3dvlm.model.scope import ScopeProfile, fit_feature_stats  # noqa: E402
from napari_med3dvlm.retrieval import VolumeIndex, index_folder, search_text  # noqa: E402
from napari_med3dvlm.retrieval.store import TABLE, index_schema  # noqa: E402


def ct_only_embedder():
    embedder = CountingEmbedder()
    embedder.scope_profile = ScopeProfile(modalities=("CT",), training_data="toy CT")
    return embedder


def test_rows_and_hits_carry_the_reasons(tmp_path):
    root = tmp_path / "collection"
    make_collection(root, 4)
    mr = (200 + 100 * np.random.default_rng(0).random((12, 24, 24))).astype(np.int16)  # no air: MR-like values
    write_nifti(root / "mr" / "t1.nii.gz", mr)
    index = VolumeIndex(tmp_path / "index")
    embedder = ct_only_embedder()
    assert index_folder(index, root, embedder).embedded == 5
    rows = index.table().search().select(["path", "scope"]).limit(None).to_arrow().to_pylist()
    by_path = {row["path"]: row["scope"] for row in rows}
    assert by_path["mr/t1.nii.gz"].startswith("it is MR, the model knows CT only")
    assert all(scope == "" for path, scope in by_path.items() if path != "mr/t1.nii.gz")
    hits = search_text(index, embedder, "anything", k=5)
    flagged = {hit.relative_path: hit.scope for hit in hits}
    assert flagged["mr/t1.nii.gz"] and all(not s for p, s in flagged.items() if p != "mr/t1.nii.gz")


def test_the_embedding_check_marks_volumes_unlike_the_training_ones(tmp_path):
    root = tmp_path / "collection"
    make_collection(root, 3)
    embedder = ct_only_embedder()
    rng = np.random.default_rng(1)
    opposite = -embedder.embed_volumes(torch.zeros(1, 1, 16, 32, 32) + torch.linspace(0, 1, 32))[0]
    train = torch.tensor(opposite + 0.01 * rng.standard_normal((100, embedder.dim)), dtype=torch.float32)
    embedder.scope_profile.features["siglip"] = fit_feature_stats(train, components=4)
    index = VolumeIndex(tmp_path / "index")
    index_folder(index, root, embedder)
    scopes = index.table().search().select(["scope"]).limit(None).to_arrow()["scope"].to_pylist()
    assert len(scopes) == 3 and all("image embedding" in s for s in scopes)


def test_an_index_from_before_the_check_opens_and_updates(tmp_path):
    old_schema = pa.schema([f for f in index_schema(4) if f.name != "scope"])
    db = lancedb.connect(str(tmp_path / "index"))
    row = {"key": "0/a.nii.gz", "root_id": 0, "path": "a.nii.gz", "series": "", "content_hash": "h",
           "description": "", "modality": "CT", "shape": [2, 2, 2], "spacing": [1.0, 1.0, 1.0],
           "thumbnail": b"", "model_id": "m", "vector": [1.0, 0.0, 0.0, 0.0]}
    db.create_table(TABLE, data=pa.Table.from_pylist([row], schema=old_schema))
    index = VolumeIndex(tmp_path / "index")
    info = index._read_info()
    info.update(model_id="m", dim=4, roots={"0": str(tmp_path)})
    index._write_info(info)
    [hit] = index.search(np.array([1.0, 0, 0, 0], dtype=np.float32), k=1)
    assert hit.scope == ()  # not checked
    index.upsert([{**row, "key": "0/b.nii.gz", "path": "b.nii.gz", "scope": "it is MR"}])
    hits = index.search(np.array([1.0, 0, 0, 0], dtype=np.float32), k=2)
    assert {h.relative_path: h.scope for h in hits} == {"a.nii.gz": (), "b.nii.gz": ("it is MR",)}
