"""Loading the embedded demo model: the cached merged language model against rebuilding it.

Each round is a fresh process that first imports what a load needs (torch, transformers' Llama
modules), then times ``load_embedded`` alone: once with the merged-model cache (the default; a
first run fills it and is not counted), once with ``NAPARI_MED3DVLM_MERGED_CACHE=0`` (the base
converted, the new token rows, overrides and the LoRA adapter merged on every load). Rounds
alternate the two.

    python benchmarks/model_load.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CHILD = """
import time
import transformers.models.llama.modeling_llama  # the imports are not the load
from napari_med3dvlm.model.embedded import load_embedded
from napari_med3dvlm.model.loading import resolve_source
start = time.perf_counter()
load_embedded(resolve_source("embedded"))
print(time.perf_counter() - start)
"""


def _summary(values) -> str:
    return f"median {statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def timed(cache: bool) -> float:
    env = {**os.environ, "NAPARI_MED3DVLM_MERGED_CACHE": "1" if cache else "0"}
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"load failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    timed(cache=True)  # fills the cache on a first run ever
    cached, rebuilt = [], []
    for _ in range(args.rounds):
        cached.append(timed(cache=True))
        rebuilt.append(timed(cache=False))
    print(f"load_embedded, merged model cached  s {_summary(cached)}")
    print(f"load_embedded, rebuilt and merged   s {_summary(rebuilt)}")
    print(f"ratio cached / rebuilt {_summary([a / b for a, b in zip(cached, rebuilt)])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
