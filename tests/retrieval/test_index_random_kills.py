"""Indexing killed with SIGKILL at seeded random points, resumed after each kill, ends with exactly
the rows of an uninterrupted run: the same keys, vectors and metadata, and no duplicates.

A kill point is a number of committed rows the run must have reached plus a random delay after it
(cut short once two more rows are committed, so a run cannot finish first), so kills land while the
run starts, plans, reads volumes, embeds or commits a batch.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from retrieval_toys import CountingEmbedder, index_rows, indexing_child, make_collection

from napari_med3dvlm.retrieval import VolumeIndex, index_folder

# slow: indexing killed at random points in subprocesses
pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
SEED = 1515
KILLS = 5
VOLUMES = 10

CHILD = indexing_child(delay=0.3)


def _kill_at(db: Path, root: Path, rows: int, delay: float) -> bool:
    """Run the indexer and SIGKILL it ``delay`` s after ``rows`` rows are committed; False if it finished first."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), str(root), str(HERE)], env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    try:
        deadline = time.monotonic() + 600  # a loaded machine is slow, not hung
        while index_rows(db) < rows and child.poll() is None:
            assert time.monotonic() < deadline, f"{rows} rows never came"
            time.sleep(0.02)
        until, cap = time.monotonic() + delay, min(rows + 2, VOLUMES - 2)
        while time.monotonic() < until and index_rows(db) < cap:
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode == -signal.SIGKILL


def _table(db) -> dict:
    """Every stored row by key (all columns), asserting that no key is stored twice."""
    rows = VolumeIndex(db).table().to_arrow().to_pylist()
    keys = [row["key"] for row in rows]
    assert len(keys) == len(set(keys)), "duplicate rows"
    return {row["key"]: row for row in rows}


def test_killed_at_random_points_then_resumed_matches_uninterrupted_run(tmp_path):
    root = tmp_path / "collection"
    make_collection(root, VOLUMES)
    expected = tmp_path / "uninterrupted"
    index_folder(expected, root, CountingEmbedder(), batch_size=2)

    db = tmp_path / "killed"
    rng = random.Random(SEED)
    points = sorted(rng.sample(range(1, VOLUMES - 2), KILLS))
    killed, kept = [], []
    for rows in points:
        killed.append(_kill_at(db, root, rows, rng.uniform(0.0, 0.5)))
        kept.append(len(VolumeIndex(db)))  # the index opens after every kill
    assert sum(killed) >= KILLS, f"only {sum(killed)} of the runs were killed"
    assert kept == sorted(kept), kept

    resumed = CountingEmbedder()
    report = index_folder(db, root, resumed, batch_size=2)
    assert not report.failed and report.unchanged + report.embedded == VOLUMES
    assert resumed.volumes_embedded == report.embedded  # committed rows are not embedded again

    want, got = _table(expected), _table(db)
    assert sorted(got) == sorted(want) and len(got) == VOLUMES
    for key, row in want.items():
        assert np.array_equal(np.asarray(got[key]["vector"]), np.asarray(row["vector"])), key
        for column in ("path", "series", "content_hash", "model_id", "shape", "spacing", "thumbnail", "description"):
            assert got[key][column] == row[column], (key, column)
