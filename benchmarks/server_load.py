"""Load on a backend server over loopback: concurrent clients uploading volumes and asking for
reports and chat answers, against the same report in-process.

Starts `napari-med3dvlm serve` (the embedded demo model unless --model) on a free port, then:

1. one report of the sample through the server and the same report in this process, alternated
   over --rounds rounds: the remote/in-process time ratio (target <= 1.15 on loopback);
2. --clients clients at once, each with its own volume (the sample with a per-client mark, so each
   is a new upload), each asking --requests times for a report and a chat answer.

Prints requests per minute, p50/p95 time to first token and total latency, errors, and the server
process's peak resident memory.

    python benchmarks/server_load.py [--clients 8] [--requests 2] [--tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(model: str, token: str, log: Path):
    import httpx

    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_med3dvlm", "serve", "--port", str(port), "--token", token, "--model", model,
         "--device", "cpu", "--log-level", "warning"],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if process.poll() is not None:
            raise SystemExit(f"serve exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"{url}/v1/health", headers={"Authorization": f"Bearer {token}"}, timeout=1).is_success:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise SystemExit("serve did not start")


class _PeakRSS(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.peak = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except Exception:  # noqa: BLE001 - the server ended
                return
            time.sleep(0.05)


def _timed(pieces) -> tuple[float, float]:
    """(time to first piece, total) of draining a piece generator."""
    start = time.perf_counter()
    first = None
    try:
        while True:
            next(pieces)
            if first is None:
                first = time.perf_counter() - start
    except StopIteration:
        pass
    return (first if first is not None else float("nan")), time.perf_counter() - start


def _percentile(values, q) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2, help="report + chat pairs per client")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the remote/in-process comparison")
    parser.add_argument("--model", default="embedded")
    args = parser.parse_args(argv)

    from napari_med3dvlm.inference import Conversation, InferenceEngine, stream_report
    from napari_med3dvlm.inference.remote import RemoteEngine
    from napari_med3dvlm.io import Volume
    from napari_med3dvlm.phantoms._napari import render_sample
    from napari_med3dvlm.settings import InferenceSettings

    token = "benchmark-token"
    settings = InferenceSettings(model_source=args.model, device="cpu", max_new_tokens=args.tokens)
    sample = render_sample().volume
    with tempfile.TemporaryDirectory() as tmp:
        process, url = _start(args.model, token, Path(tmp) / "serve.log")
        rss = _PeakRSS(process.pid)
        rss.start()
        try:
            # 1. one remote report against the same report in this process (features cached on both sides
            # after the first round, as for a user who asks again)
            local = InferenceEngine(settings)
            remote = RemoteEngine(url, token, settings)
            texts = {}
            times = {"local": [], "remote": []}
            for name, engine in (("local", local), ("remote", remote)):  # warm-up: load, upload, encode
                texts[name] = "".join(stream_report(engine, sample))
            for _ in range(args.rounds):
                for name, engine in (("local", local), ("remote", remote)):
                    times[name].append(_timed(stream_report(engine, sample))[1])
            ratios = [r / loc for r, loc in zip(times["remote"], times["local"])]
            local.unload()

            # 2. concurrent clients
            ttft, total, errors = [], [], []
            lock = threading.Lock()

            def client(index: int):
                engine = RemoteEngine(url, token, settings)
                data = np.array(sample.data, copy=True)
                data[0, 0, 0] += index + 1  # a volume of its own: a new upload
                volume = Volume(data, spacing=sample.spacing, origin=sample.origin, affine=sample.affine,
                                modality=sample.modality, plane=sample.plane)
                for _ in range(args.requests):
                    for make in (lambda: stream_report(engine, volume),
                                 lambda: Conversation().stream_answer(engine, volume, "Which organ is abnormal?")):
                        try:
                            first, whole = _timed(make())
                        except Exception as err:  # noqa: BLE001 - counted and named below
                            with lock:
                                errors.append(f"{type(err).__name__}: {err}")
                            continue
                        with lock:
                            ttft.append(first)
                            total.append(whole)

            started = time.perf_counter()
            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - started
        finally:
            rss.stop.set()
            process.terminate()
            process.wait(10)

    print(f"model {args.model}, {args.tokens} new tokens max, CPU threads of this machine: {os.cpu_count()}")
    print(f"same text remote and in-process: {texts['remote'] == texts['local']}")
    print(f"one report, in-process   s: median {statistics.median(times['local']):.2f} "
          f"(min {min(times['local']):.2f}, max {max(times['local']):.2f})")
    print(f"one report, through server s: median {statistics.median(times['remote']):.2f} "
          f"(min {min(times['remote']):.2f}, max {max(times['remote']):.2f})")
    print(f"ratio remote/in-process (time) median {statistics.median(ratios):.2f} "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f})  target <= 1.15")
    done = len(total)
    print(f"{args.clients} clients x {args.requests} x (report + chat): {done} requests in {wall:.1f} s = "
          f"{60 * done / wall:.1f} requests/min, {len(errors)} errors")
    print(f"time to first token s: p50 {_percentile(ttft, 50):.2f}, p95 {_percentile(ttft, 95):.2f}")
    print(f"total latency s:       p50 {_percentile(total, 50):.2f}, p95 {_percentile(total, 95):.2f}")
    print(f"server peak RSS: {rss.peak / 2**20:.0f} MiB")
    for line in errors[:5]:
        print(f"error: {line}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
