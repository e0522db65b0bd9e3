"""Indexing a folder: incremental refresh, pruning, DICOM series, cancel and resume."""

import os
import threading

import numpy as np
from retrieval_toys import CountingEmbedder, make_collection, phantom, write_dicom_series, write_nifti

from napari_med3dvlm.io import read_volume
from napari_med3dvlm.retrieval import VolumeIndex, index_folder, search_volume
from napari_med3dvlm.retrieval.thumbnail import png_to_array


def test_reindexing_an_unchanged_folder_does_no_encoder_work(tmp_path, collection, embedder):
    first = index_folder(tmp_path / "db", collection, embedder, batch_size=4)
    assert (first.embedded, first.unchanged, first.failed) == (6, 0, [])
    assert embedder.volumes_embedded == 6

    again = CountingEmbedder()
    second = index_folder(tmp_path / "db", collection, again)
    assert again.volumes_embedded == 0 and again.texts_embedded == 0
    assert (second.embedded, second.unchanged) == (0, 6)
    assert len(VolumeIndex(tmp_path / "db")) == 6


def test_changed_files_are_reembedded_and_deleted_ones_pruned(tmp_path, collection, embedder):
    db = tmp_path / "db"
    index_folder(db, collection, embedder)
    files = sorted(collection.rglob("*.nii.gz"))
    write_nifti(files[0], phantom(100))  # new content under an old name
    os.remove(files[1])
    write_nifti(collection / "new" / "extra.nii.gz", phantom(200))

    counting = CountingEmbedder()
    report = index_folder(db, collection, counting)
    assert counting.volumes_embedded == 2  # the changed and the new file, nothing else
    assert (report.embedded, report.unchanged, report.removed) == (2, 4, 1)

    index = VolumeIndex(db)
    paths = sorted(row["key"].split("/", 1)[1] for row in index.entries().values())
    expected = sorted(p.relative_to(collection).as_posix() for p in collection.rglob("*.nii.gz"))
    assert paths == expected


def test_a_volume_finds_itself_first(tmp_path, collection, embedder):
    index = VolumeIndex(tmp_path / "db")
    index_folder(index, collection, embedder)
    target = sorted(collection.rglob("*.nii.gz"))[3]
    volume = read_volume(target)

    hits = search_volume(index, embedder, volume, k=3)
    assert len(hits) == 3
    assert hits[0].path == target.resolve()
    assert hits[0].score > 0.999
    assert hits[0].score >= hits[1].score >= hits[2].score
    thumb = png_to_array(hits[0].thumbnail)
    assert max(thumb.shape) == 96 and thumb.max() > thumb.min()
    assert hits[0].shape == volume.shape and hits[0].modality == "CT"


def test_a_dicom_series_is_one_entry(tmp_path, embedder):
    root = tmp_path / "collection"
    write_dicom_series(root / "study" / "series_a", phantom(7, shape=(8, 16, 16)).astype(np.int16))
    write_nifti(root / "other.nii.gz", phantom(8))
    (root / "study" / "series_a" / "notes.txt").write_text("not an image")

    report = index_folder(tmp_path / "db", root, embedder)
    assert (report.total, report.embedded, report.failed) == (2, 2, [])
    rows = VolumeIndex(tmp_path / "db").entries(columns=("key", "path", "series", "shape", "description"))
    dicom = [row for row in rows.values() if row["series"]]
    assert len(dicom) == 1
    assert dicom[0]["path"] == "study/series_a" and dicom[0]["shape"] == [8, 16, 16]
    assert dicom[0]["description"] == "toy CT series"
    # The index stores the reader's one-way hash, never the UID.
    assert "." not in dicom[0]["series"]


def test_switching_models_reembeds_everything(tmp_path, collection, embedder):
    db = tmp_path / "db"
    index_folder(db, collection, embedder)
    other = CountingEmbedder(model_id="toy-grid-v2")
    index_folder(db, collection, other)
    assert other.volumes_embedded == 6
    index = VolumeIndex(db)
    assert index.model_id == "toy-grid-v2" and len(index) == 6


def test_cancel_keeps_finished_batches_and_a_rerun_completes(tmp_path, collection):
    db = tmp_path / "db"
    cancel = threading.Event()
    embedder = CountingEmbedder()

    def progress(done, total, message):
        if embedder.volumes_embedded >= 2:
            cancel.set()

    report = index_folder(db, collection, embedder, batch_size=2, progress=progress, cancel=cancel)
    assert report.cancelled
    kept = len(VolumeIndex(db))
    assert 2 <= kept < 6

    resumed = CountingEmbedder()
    index_folder(db, collection, resumed, batch_size=2)
    assert resumed.volumes_embedded == 6 - kept
    assert len(VolumeIndex(db)) == 6


def test_unreadable_files_are_reported_not_fatal(tmp_path, collection, embedder):
    (collection / "broken.nii.gz").write_bytes(b"not a nifti file")
    report = index_folder(tmp_path / "db", collection, embedder)
    assert report.embedded == 6
    assert [path for path, _ in report.failed] == ["broken.nii.gz"]


def test_content_hash_sees_edits_even_with_the_old_timestamp(tmp_path):
    from napari_med3dvlm.retrieval.sources import content_hash

    path = write_nifti(tmp_path / "a.nii.gz", phantom(1))
    before = content_hash([path])
    stat = path.stat()
    write_nifti(path, phantom(2))  # same size is likely (same shape); restore the old mtime too
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert content_hash([path]) != before


def test_a_coronal_series_queried_as_a_layer_finds_itself(tmp_path, embedder):
    import nibabel as nib

    root = tmp_path / "collection"
    root.mkdir()
    # Stored (x, y, z) with the third voxel axis running anterior-posterior: a coronal acquisition.
    data = np.asarray(phantom(3, shape=(20, 8, 24)), dtype=np.int16)  # (x, slices, z) before the swap
    affine = np.array([[1.0, 0, 0, 0], [0, 0, 4.0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), str(root / "coronal.nii.gz"))
    for seed in range(3):
        write_nifti(root / f"axial_{seed}.nii.gz", phantom(seed))
    index = VolumeIndex(tmp_path / "db")
    index_folder(index, root, embedder)

    volume = read_volume(root / "coronal.nii.gz")
    assert volume.plane == "coronal"
    layer_data, plane = volume.data, volume.plane  # what the dock gets from a layer
    best = search_volume(index, embedder, layer_data, "CT", k=1, plane=plane)[0]
    assert best.relative_path == "coronal.nii.gz" and best.score > 0.999
