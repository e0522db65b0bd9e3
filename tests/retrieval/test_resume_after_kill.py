"""An indexing process killed with SIGKILL in the middle of a run leaves a usable index, and the
next run completes it without duplicates and without re-embedding what was committed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from retrieval_toys import CountingEmbedder, index_rows, indexing_child, make_collection

from napari_med3dvlm.retrieval import VolumeIndex, index_folder

# slow: an indexing subprocess killed and resumed
pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
VOLUMES = 10

CHILD = indexing_child(delay=0.4)


def test_sigkill_midway_then_resume(tmp_path):
    root = tmp_path / "collection"
    make_collection(root, VOLUMES)
    db = tmp_path / "db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), str(root), str(HERE)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 90
        while index_rows(db) < 4 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        assert child.poll() is None, "indexing finished before it could be interrupted"
        time.sleep(0.3)  # land somewhere inside the next batch
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()

    index = VolumeIndex(db)
    kept = len(index)
    assert 4 <= kept < VOLUMES

    resumed = CountingEmbedder()
    report = index_folder(db, root, resumed, batch_size=2)
    assert resumed.volumes_embedded == VOLUMES - kept
    assert report.unchanged == kept

    keys = [row["key"] for row in VolumeIndex(db).entries().values()]
    table_keys = VolumeIndex(db).table().to_arrow()["key"].to_pylist()
    assert len(table_keys) == len(set(table_keys)) == VOLUMES
    assert sorted(keys) == sorted(table_keys)
