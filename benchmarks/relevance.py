"""Time of a relevance map against the time of the report it explains, on the embedded model.

    python benchmarks/relevance.py [--tokens 128] [--rounds 2] [--method combined]

The report of the phantom sample is generated with exactly ``--tokens`` new tokens (greedy, features
encoded from scratch: what the Report dock does for a new volume), and its whole text is then
explained as one span the way "Show where" does it (preprocessing, one forward and backward pass,
mapping onto the layer's grid). Prints both times and their ratio (target <= 3).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--method", default="combined")
    parser.add_argument("--model", default="embedded")
    args = parser.parse_args(argv)

    from napari_med3dvlm.inference import InferenceEngine, InferenceSettings
    from napari_med3dvlm.model import prompts
    from napari_med3dvlm.inference.relevance import report_target, stream_relevance
    from napari_med3dvlm.phantoms._napari import render_sample

    source = render_sample().volume
    engine = InferenceEngine(InferenceSettings(model_source=args.model, device="cpu", temperature=0.0))
    model, tokenizer = engine.load()
    prompt = prompts.report_prompt(engine.proj_out_num)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    report_times, map_times = [], []
    for _ in range(args.rounds):
        engine.features.clear()
        started = time.perf_counter()
        encoded = engine.encode(source)
        with torch.inference_mode():
            new = model.generate(input_ids=ids, image_features=encoded.features, max_new_tokens=args.tokens,
                                 min_new_tokens=args.tokens, do_sample=False)
        report_times.append(time.perf_counter() - started)
        text = tokenizer.decode(new[0], skip_special_tokens=True).strip()
        target = report_target(engine.proj_out_num, text, 0, len(text))
        started = time.perf_counter()
        task = stream_relevance(engine, source, target, args.method)
        while True:
            try:
                next(task)
            except StopIteration as stop:
                result = stop.value
                break
        map_times.append(time.perf_counter() - started)
        print(f"report {report_times[-1]:.2f} s ({new.shape[1]} tokens), map {map_times[-1]:.2f} s "
              f"({result.n_tokens} span tokens, {args.method})", flush=True)
    report_s, map_s = statistics.median(report_times), statistics.median(map_times)
    print(f"torch threads {torch.get_num_threads()}; median report {report_s:.2f} s, median map {map_s:.2f} s")
    print(f"ratio map/report: {map_s / report_s:.2f} (target <= 3)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
