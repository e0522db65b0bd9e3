"""A real `napari-med3dvlm serve` process on a free loopback port (the embedded demo model and a small
retrieval index), started once per session."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "retrieval"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval_toys import make_collection  # noqa: E402
from serving import TOKEN, free_port, start_server, stop_server  # noqa: E402


@pytest.fixture(scope="session")
def collection_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("server-collection")
    make_collection(root, 6)
    return root


@pytest.fixture(scope="session")
def embedded_index(tmp_path_factory, collection_dir):
    """A retrieval index of the toy collection, built in-process with the embedded model."""
    from napari_med3dvlm import cli

    db = tmp_path_factory.mktemp("server-index") / "db"
    assert cli.main(["index", str(collection_dir), "--db", str(db), "--model", "embedded", "--device", "cpu"]) == 0
    return db


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory, embedded_index):
    """(url, token, log path) of a server with the embedded model and the index."""
    folder = tmp_path_factory.mktemp("server")
    log = folder / "serve.log"
    process, url = start_server(["--model", "embedded", "--device", "cpu", "--index", str(embedded_index)],
                                folder / "config", log)
    yield url, TOKEN, log
    stop_server(process)


@pytest.fixture
def sample_nifti(tmp_path_factory):
    """The plugin's phantom sample as a NIfTI file under an identifying (fictional) name."""
    from napari_med3dvlm.io.nifti import write_nifti_volume
    from napari_med3dvlm.phantoms._napari import render_sample

    path = tmp_path_factory.mktemp("sample") / "DOE_JANE_19700101.nii.gz"
    write_nifti_volume(render_sample().volume, path)
    return path


@pytest.fixture
def dead_url():
    """An address where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"
