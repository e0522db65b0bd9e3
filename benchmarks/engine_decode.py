"""Engine decode speed against a bare ``generate`` of the same model, each in its own process.

Both sides get the same prompt, image features and greedy settings, so they produce the same tokens;
the ratio of their times is the ratio of their decode speeds. The engine side is ``InferenceEngine.stream``
drained to the end, as the CLI and docks do (generation on the engine's model thread, text through the
streamer); the baseline is ``model.generate`` called in a process's main thread, as a script would.

Each side runs in a worker process of its own, so that each has the threads a real program has: a
bare script drives torch from its main thread only, the CLI through the engine's model thread only.
(In one process the baseline's main thread and the engine's thread would be two OpenMP masters,
which on two cores slows both; see `inference.engine._ModelThread`.) The two workers load the model
once and then run alternately, A, B, A, B, each timing its own run.

    python benchmarks/engine_decode.py [--tokens 64] [--rounds 10]

Prints tok/s of both with min/median/max, the per-round ratio engine/bare (speed; target >= 0.9), and
for each side the cores kept busy and the voluntary context switches per run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def _summary(values) -> str:
    return f"median {statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def worker(side: str, model_source: str, tokens: int) -> int:
    """Load, warm up, then answer each 'run' line on stdin with one JSON line of timings."""
    import numpy as np
    import torch

    from napari_med3dvlm.inference.engine import InferenceEngine
    from napari_med3dvlm.io import Volume
    from napari_med3dvlm.model import prompts
    from napari_med3dvlm.settings import InferenceSettings

    settings = InferenceSettings(model_source=model_source, device="cpu", dtype="float32", max_new_tokens=tokens,
                                 temperature=0.0)
    engine = InferenceEngine(settings)
    prompt_volume = np.random.default_rng(0).integers(-1000, 1000, size=(64, 96, 96)).astype(np.int16)
    if side == "engine":
        encoded = engine.encode(Volume(prompt_volume, modality="CT"))
        prompt = prompts.image_prefix(engine.proj_out_num) + prompts.report_text()
        _, tokenizer = engine.load()

        def run() -> str:
            return "".join(engine.stream(prompt, encoded, settings))
    else:  # the bare script: the model straight from the loader, everything on this main thread
        from napari_med3dvlm.model import load_vlm
        from napari_med3dvlm.model.device import configure_cpu_threads

        configure_cpu_threads(torch.device("cpu"))
        model, tokenizer = load_vlm(model_source, device=torch.device("cpu"), dtype=torch.float32)
        model.eval()
        from napari_med3dvlm.io import model_input

        tensor, _ = model_input(Volume(prompt_volume, modality="CT"), tuple(model.config.image_size), None)
        with torch.inference_mode():
            features = model.encode_images(tensor)
        prompt = prompts.image_prefix(int(model.config.proj_out_num)) + prompts.report_text()
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos

        def run() -> str:
            with torch.inference_mode():
                out = model.generate(image_features=features, input_ids=inputs["input_ids"],
                                     attention_mask=inputs["attention_mask"], eos_token_id=eos, pad_token_id=pad,
                                     **settings.generation_kwargs())
            return tokenizer.decode(out[0], skip_special_tokens=True)

    run()  # warm-up
    print(json.dumps({"ready": True, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        text = run()
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        print(json.dumps({"wall": wall, "busy": used / wall, "switches": after.ru_nvcsw - before.ru_nvcsw,
                          "tokens": len(tokenizer(text.strip(), add_special_tokens=False)["input_ids"]),
                          "text": text.strip()}), flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--worker", choices=("engine", "bare"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.model, args.tokens)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    workers = {}
    for side in ("engine", "bare"):
        workers[side] = subprocess.Popen(
            [sys.executable, __file__, "--worker", side, "--model", args.model, "--tokens", str(args.tokens)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        threads = {side: json.loads(w.stdout.readline())["threads"] for side, w in workers.items()}
        results = {"engine": [], "bare": []}
        for _ in range(args.rounds):
            for side, w in workers.items():
                w.stdin.write("run\n")
                w.stdin.flush()
                results[side].append(json.loads(w.stdout.readline()))
    finally:
        for w in workers.values():
            w.stdin.close()
            w.wait(30)
    texts = {side: {r["text"] for r in runs} for side, runs in results.items()}
    tokens = results["bare"][0]["tokens"]
    speeds = {side: [tokens / r["wall"] for r in runs] for side, runs in results.items()}
    ratios = [b["wall"] / e["wall"] for e, b in zip(results["engine"], results["bare"])]
    print(f"tokens per run: {tokens} (greedy); same text on both sides: {texts['engine'] == texts['bare']}; "
          f"torch threads {threads}")
    print(f"engine.stream    tok/s {_summary(speeds['engine'])}")
    print(f"bare generate    tok/s {_summary(speeds['bare'])}")
    print(f"ratio engine/bare (speed) {_summary(ratios)}  target >= 0.9")
    for side, runs in results.items():
        print(f"{side:6s} cores busy {statistics.median(r['busy'] for r in runs):.2f}, voluntary context switches "
              f"per run {statistics.median(r['switches'] for r in runs):.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
