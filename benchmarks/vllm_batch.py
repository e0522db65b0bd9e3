"""Batch reports and single-stream decode with the language model in vLLM against in-process.

Batch: ``napari-med3dvlm report`` over 16 phantom NIfTI files (an unused run seed), as a user runs
it: sequential in-process (each volume read, encoded, then its report generated) against
``--llm vllm --vllm-url URL`` (volumes encoded one after another, every report requested as soon
as its volume is encoded, vLLM batching the concurrent requests). Greedy, so both write the same
reports; the script checks that and prints volumes per minute and the ratio (target >= 2x).

Single stream: one report on cached image features, ``InferenceEngine.stream`` in-process against
the same call with ``llm='vllm'``; identical tokens, so the ratio of times is the ratio of decode
speeds. Rounds alternate.

The vLLM server is started once (``start_vllm_for``) before anything is timed; the model is loaded
before anything is timed. Needs ``bash scripts/setup-vllm.sh``.

    python benchmarks/vllm_batch.py [--volumes 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

SEED = 11  # a run seed no training split and no test uses


def _summary(values, fmt="{:.2f}") -> str:
    return f"median {fmt.format(statistics.median(values))} (min {fmt.format(min(values))}, max {fmt.format(max(values))})"


def write_phantoms(folder: Path, count: int) -> list[str]:
    import nibabel as nib

    from napari_med3dvlm.phantoms import generate
    from napari_med3dvlm.phantoms.writers import case_seed

    paths = []
    for i in range(count):
        data, affine = generate(case_seed(SEED, "test", i)).nifti_array_and_affine()
        path = folder / f"phantom-{i:02d}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), str(path))
        paths.append(str(path))
    return paths


def run_cli(argv) -> float:
    from napari_med3dvlm.cli import main

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    if code != 0:
        raise SystemExit(f"report exited with {code}")
    return time.perf_counter() - start


def reports(folder: Path) -> list[str]:
    return [json.loads(p.read_text())["report"] for p in sorted(folder.glob("report-*.json"))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="single-stream rounds")
    parser.add_argument("--model", default="embedded")
    args = parser.parse_args(argv)

    from napari_med3dvlm.inference import InferenceSettings, set_engine
    from napari_med3dvlm.inference import vllm_backend as vb
    from napari_med3dvlm.inference.engine import InferenceEngine
    from napari_med3dvlm.model import prompts
    from napari_med3dvlm.phantoms import generate
    from napari_med3dvlm.phantoms.writers import case_seed

    settings = InferenceSettings(model_source=args.model, device="cpu", dtype="float32", temperature=0.0)
    engine = InferenceEngine(settings, cache_size=max(8, args.volumes))
    set_engine(engine)
    engine.load()
    start = time.perf_counter()
    process = vb.start_vllm_for(engine)
    print(f"vLLM server started in {time.perf_counter() - start:.1f} s (load and warm-up; not in the timings below)")
    common = ["--model", args.model, "--device", "cpu", "--dtype", "float32", "--temperature", "0", "--no-scope-warning"]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_phantoms(tmp, args.volumes)
        engine.features.clear()
        sequential = run_cli(["report", *paths, "--out", str(tmp / "seq"), *common, "--llm", "transformers"])
        engine.features.clear()
        batched = run_cli(["report", *paths, "--out", str(tmp / "vllm"), *common, "--llm", "vllm",
                           "--vllm-url", process.url])
        same = sum(a == b for a, b in zip(reports(tmp / "seq"), reports(tmp / "vllm")))
    n = args.volumes
    print(f"batch report, {n} volumes (read + encode + report, greedy): {same}/{n} reports identical")
    print(f"  in-process sequential  {sequential:7.1f} s  {60 * n / sequential:6.1f} volumes/min")
    print(f"  vLLM, all at once      {batched:7.1f} s  {60 * n / batched:6.1f} volumes/min")
    print(f"  ratio vLLM / in-process (throughput) {sequential / batched:.2f}x  target >= 2x")

    engine.update_settings(settings.updated(max_new_tokens=256))
    volume = generate(case_seed(SEED, "test", 0)).volume
    encoded = engine.encode(volume)
    prompt = prompts.image_prefix(engine.proj_out_num) + prompts.report_text()
    remote = engine.settings.updated(llm="vllm", vllm_url=process.url)

    def timed(run_settings):
        start = time.perf_counter()
        text = "".join(engine.stream(prompt, encoded, run_settings))
        return time.perf_counter() - start, text

    timed(engine.settings), timed(remote)  # warm-up
    local_s, remote_s, ratios = [], [], []
    for _ in range(args.rounds):
        a, text_a = timed(engine.settings)
        b, text_b = timed(remote)
        if text_a != text_b:
            raise SystemExit("single stream: vLLM and in-process differ")
        local_s.append(a)
        remote_s.append(b)
        ratios.append(a / b)
    tokens = engine.count_tokens(text_a) + 1  # and the end-of-sequence token
    print(f"single stream, one report on cached features ({tokens} tokens, identical both ways):")
    print(f"  in-process  tok/s {_summary([tokens / t for t in local_s])}")
    print(f"  vLLM        tok/s {_summary([tokens / t for t in remote_s])}")
    print(f"  ratio vLLM / in-process (speed) {_summary(ratios)}")
    vb.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
