"""The index embeds a phantom volume exactly as the model saw it in training: the tensor given to the
encoder from the raw HU NIfTI equals the .npy the training data was written as."""

import json

import numpy as np
from retrieval_toys import CountingEmbedder

from napari_med3dvlm.phantoms.writers import WriteOptions, write_split
from napari_med3dvlm.retrieval import index_folder


class RecordingEmbedder(CountingEmbedder):
    def __init__(self, spatial_size):
        super().__init__()
        self.spatial_size = tuple(spatial_size)
        self.seen = []

    def embed_volumes(self, images):
        self.seen.extend(image.numpy() for image in images)
        return super().embed_volumes(images)


def test_indexed_tensors_equal_the_training_tensors(tmp_path):
    options = WriteOptions(size=(8, 16, 16), slices=24, pixels=64)
    write_split(tmp_path, {"test": 3}, seed=11, options=options, workers=1)
    embedder = RecordingEmbedder(options.size)
    report = index_folder(tmp_path / "db", tmp_path / "M3D_Cap_npy", embedder, batch_size=1)
    assert report.embedded == 3 and not report.failed

    entries = json.loads((tmp_path / "M3D_Cap.json").read_text())["test"]
    expected = sorted(entries, key=lambda e: e["image"])  # the index walks folders in sorted order
    assert len(embedder.seen) == len(expected)
    for seen, entry in zip(embedder.seen, expected):
        np.testing.assert_allclose(seen, np.load(tmp_path / entry["image"]), atol=1e-6)
