"""Start and stop real `napari-med3dvlm serve` processes for tests (imported by path: the suite runs
with --import-mode=importlib)."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

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
        process.wait(60)  # a graceful stop: the server stops what it started (a vLLM) before it exits
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


