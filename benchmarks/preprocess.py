"""``preprocess_volume`` against a plain torch pipeline doing the same job, with peak memory.

The input is a CT-like int16 volume (air around an elliptical body with a table), 300x512x512 by
default, resized to the published 128x256x256. The baseline is what one would write with torch alone:
convert to float32, window, min-max, crop to the foreground, ``F.interpolate``. Both must give the
identical tensor (checked). Times alternate A, B, A, B in one process; peak memory is measured for each
in a fresh child process as the growth of the peak resident set over the input already in memory.

    python benchmarks/preprocess.py [--shape 300 512 512] [--rounds 5]

Targets: time ratio <= 1.0, peak <= 3x the input's bytes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from napari_med3dvlm.io import PUBLISHED_INPUT_SIZE

OUT = PUBLISHED_INPUT_SIZE
WINDOW = (40.0, 400.0)


def ct_like(shape, seed=0) -> np.ndarray:
    """Air, an elliptical body of soft tissue with noise, a table below it; built slice by slice."""
    d, h, w = shape
    rng = np.random.default_rng(seed)
    volume = np.full(shape, -1000, np.int16)
    y, x = np.ogrid[:h, :w]
    body = ((y - h * 0.45) / (h * 0.36)) ** 2 + ((x - w / 2) / (w * 0.44)) ** 2 < 1
    for z in range(d):
        volume[z][body] = rng.integers(-120, 200, int(body.sum()), dtype=np.int16)
        volume[z, int(h * 0.86) : int(h * 0.9), int(w * 0.1) : int(w * 0.9)] = 300
    return volume


def plain_torch(data: np.ndarray) -> torch.Tensor:
    low, high = WINDOW[0] - WINDOW[1] / 2, WINDOW[0] + WINDOW[1] / 2
    t = torch.from_numpy(data).float()
    t = ((t - low) / (high - low)).clamp(0, 1)
    vmin, vmax = float(t.min()), float(t.max())
    t = (t - vmin) / (vmax - vmin + 1e-8)
    mask = t > 0
    box = []
    for axis in range(3):
        hit = torch.nonzero(mask.any(dim=tuple(a for a in range(3) if a != axis))).flatten()
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    t = t[tuple(box)].contiguous()[None, None]
    return F.interpolate(t, size=OUT, mode="trilinear", align_corners=False)


def ours(data: np.ndarray) -> torch.Tensor:
    from napari_med3dvlm.io import preprocess_volume

    return preprocess_volume(data, "CT", WINDOW, OUT)[0]


METHODS = {"preprocess_volume": ours, "plain torch": plain_torch}


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> bool:
    """Linux: reset the peak resident set (VmHWM) to the current one."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(method: str, shape) -> None:
    data = ct_like(shape)
    import napari_med3dvlm.io  # noqa: F401 - imports are not the function's memory

    METHODS[method](ct_like((8, 32, 32)))
    _reset_peak()
    before = _status("VmRSS")
    METHODS[method](data)
    peak = _status("VmHWM")
    print(json.dumps({"peak_growth": max(0, peak - before), "input": data.nbytes}))


def _summary(values, fmt="{:.3f}") -> str:
    return f"median {fmt.format(statistics.median(values))} (min {fmt.format(min(values))}, max {fmt.format(max(values))})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, tuple(args.shape))
        return 0
    data = ct_like(tuple(args.shape))
    a, b = ours(data), plain_torch(data)
    same = torch.equal(a, b)
    diff = float((a - b).abs().max())
    times = {name: [] for name in METHODS}
    ratios = []
    for _ in range(args.rounds):
        round_times = {}
        for name, method in METHODS.items():
            start = time.perf_counter()
            method(data)
            round_times[name] = time.perf_counter() - start
            times[name].append(round_times[name])
        ratios.append(round_times["preprocess_volume"] / round_times["plain torch"])
    print(f"input {tuple(args.shape)} int16 ({data.nbytes / 1e6:.0f} MB) -> {OUT}; torch threads {torch.get_num_threads()}")
    print(f"identical output: {same} (max abs difference {diff:.2e})")
    for name in METHODS:
        print(f"{name:18s} s {_summary(times[name])}")
    print(f"time ratio preprocess_volume / plain torch {_summary(ratios, '{:.2f}')}  target <= 1.0")
    for name in METHODS:
        out = subprocess.run(
            [sys.executable, __file__, "--child", name, "--shape", *map(str, args.shape)],
            capture_output=True, text=True, check=False,
        )
        if out.returncode:
            print(out.stderr, file=sys.stderr)
            return 1
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name:18s} peak growth {result['peak_growth'] / 1e6:.0f} MB = {result['peak_growth'] / result['input']:.2f}x input")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
