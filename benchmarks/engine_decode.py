"""Engine decode speed against a bare ``generate`` of the same loaded model, in one process.

Both sides get the same prompt, image features and greedy settings, so they produce the same tokens;
the ratio of their times is the ratio of their decode speeds. The engine side is ``InferenceEngine.stream``
drained to the end, as the CLI and docks do (generation in a background thread, text through the
streamer); the baseline is ``model.generate`` called in the main thread. Rounds alternate A, B, A, B.

    python benchmarks/engine_decode.py [--tokens 64] [--rounds 5]

Prints tok/s of both with min/median/max and the per-round ratio engine/bare (speed; target >= 0.9).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def _summary(values) -> str:
    return f"median {statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default="embedded")
    args = parser.parse_args(argv)

    from napari_med3dvlm.model import prompts
    from napari_med3dvlm.inference.engine import InferenceEngine
    from napari_med3dvlm.settings import InferenceSettings
    from napari_med3dvlm.io import Volume

    settings = InferenceSettings(
        model_source=args.model, device="cpu", dtype="float32", max_new_tokens=args.tokens, temperature=0.0
    )
    engine = InferenceEngine(settings)
    model, tokenizer = engine.load()
    rng = np.random.default_rng(0)
    volume = rng.integers(-1000, 1000, size=(64, 96, 96)).astype(np.int16)
    encoded = engine.encode(Volume(volume, modality="CT"))
    prompt = prompts.image_prefix(engine.proj_out_num) + prompts.report_text()
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos

    def bare() -> int:
        with torch.inference_mode():
            out = model.generate(
                image_features=encoded.features,
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                eos_token_id=eos,
                pad_token_id=pad,
                **settings.generation_kwargs(),
            )
        return int(out.shape[-1])

    def through_engine() -> int:
        text = "".join(engine.stream(prompt, encoded, settings))
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    bare_tokens = bare()  # warm-up; greedy, so every run yields these tokens
    through_engine()
    speeds = {"engine": [], "bare": []}
    ratios = []
    for _ in range(args.rounds):
        times = {}
        for name, run in (("engine", through_engine), ("bare", bare)):
            start = time.perf_counter()
            run()
            times[name] = time.perf_counter() - start
        tokens = bare_tokens
        for name in times:
            speeds[name].append(tokens / times[name])
        ratios.append(times["bare"] / times["engine"])
    print(f"tokens per run: {bare_tokens} (greedy, same output on both sides); torch threads {torch.get_num_threads()}")
    print(f"engine.stream    tok/s {_summary(speeds['engine'])}")
    print(f"bare generate    tok/s {_summary(speeds['bare'])}")
    print(f"ratio engine/bare (speed) {_summary(ratios)}  target >= 0.9")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
