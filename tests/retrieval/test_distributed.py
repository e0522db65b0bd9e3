"""Indexing sharded across two processes (torchrun / accelerate launch): each embeds its own part,
and the result is one complete index without duplicates or leftover shard tables."""

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from retrieval_toys import CountingEmbedder, make_collection

from napari_med3dvlm.retrieval import VolumeIndex, index_folder

# slow: two processes under torchrun
pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent

CHILD = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[3])
    from retrieval_toys import CountingEmbedder
    from accelerate import PartialState
    from napari_med3dvlm.retrieval.indexer import index_folder_distributed
    embedder = CountingEmbedder()
    index_folder_distributed(sys.argv[1], sys.argv[2], embedder, batch_size=2)
    print("EMBEDDED " + json.dumps([PartialState(cpu=True).process_index, embedder.volumes_embedded]), flush=True)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_share_the_work(tmp_path):
    root = tmp_path / "collection"
    make_collection(root, 6)
    db = tmp_path / "db"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         str(script), str(db), str(root), str(HERE)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(json.loads(line.split(" ", 1)[1]) for line in result.stdout.splitlines() if line.startswith("EMBEDDED"))
    assert sorted(counts) == [0, 1]
    assert counts[0] == counts[1] == 3

    index = VolumeIndex(db)
    keys = index.table().to_arrow()["key"].to_pylist()
    assert len(keys) == len(set(keys)) == 6
    assert index.shard_tables() == []

    again = CountingEmbedder()
    index_folder(db, root, again)  # a later single-process refresh sees a complete index
    assert again.volumes_embedded == 0
