"""A real `napari-med3dvlm serve` process on a free loopback port (the embedded demo model and a small
retrieval index), started once per session, and helpers to start more."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "retrieval"))
from retrieval_toys import make_collection  # noqa: E402

TOKEN = "test-token-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args, config_dir: Path, log: Path, port: int | None = None, token: str = TOKEN,
                 timeout: float = 240.0):
    """Start `serve` with ``args`` and wait until it answers; returns (process, url)."""
    port = port or free_port()
    env = {**os.environ, "NAPARI_MED3DVLM_CONFIG_DIR": str(config_dir), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    env.pop("NAPARI_MED3DVLM_SERVER", None)
    handle = open(log, "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_med3dvlm", "serve", "--port", str(port), "--token", token,
         "--log-level", "warning", *args],
        stdout=handle, stderr=subprocess.STDOUT, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{url}/v1/health", headers={"Authorization": f"Bearer {token}"}, timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"serve did not start in {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


def stop_server(process) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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
    write_nifti_volume(render_sample().display_volume(), path)
    return path


@pytest.fixture
def dead_url():
    """An address where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"
