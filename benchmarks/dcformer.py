"""DCFormer forward in the layout the encoder picks against the reference layout, identical weights.

The baseline is the same module run as the reference implementation does (contiguous NCDHW tensors
throughout, ``memory_format="contiguous"``); the candidate is the default (``"auto"``: on CPU the
stem's fused path, on CUDA channels-last). ``--channels-last`` also times the opt-in channels-last
layout on CPU. Same random weights (BatchNorm in eval mode with non-trivial statistics), same input;
the largest absolute difference of the five stage outputs is printed. Rounds alternate A, B.

    python benchmarks/dcformer.py [--variant small] [--size 128 256 256] [--rounds 3] [--channels-last] [--compile] [--profile]

``--profile`` also prints, for the reference and the default, the operators that take the most CPU
time in one forward (torch.profiler, grouped by input shape): where the time goes.

Target: time ratio <= 0.6 with fp32 outputs within 1e-5.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from napari_med3dvlm.io import PUBLISHED_INPUT_SIZE


def _summary(values, fmt="{:.2f}") -> str:
    return f"median {fmt.format(statistics.median(values))} (min {fmt.format(min(values))}, max {fmt.format(max(values))})"


def build(variant: str, seed: int = 0):
    from napari_med3dvlm.model.dcformer import DCFormer, DCFormerConfig

    torch.manual_seed(seed)
    model = DCFormer(DCFormerConfig(variant=variant)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        for name, param in model.named_parameters():
            if name.endswith("scale"):
                param.fill_(0.1)  # layer scale well above its 1e-6 init, so the blocks matter
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="small")
    parser.add_argument("--size", type=int, nargs=3, default=PUBLISHED_INPUT_SIZE)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--channels-last", action="store_true", help="also time the opt-in channels-last layout")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the default layout")
    parser.add_argument("--profile", action="store_true", help="print the costliest operators of one forward")
    args = parser.parse_args(argv)

    candidate = build(args.variant)  # memory_format "auto"
    reference = build(args.variant)
    reference.memory_format = "contiguous"
    images = torch.rand(1, 1, *args.size, generator=torch.Generator().manual_seed(1))
    runs = {"default": candidate, "reference": reference}
    if args.channels_last:
        runs["channels-last"] = build(args.variant)
        runs["channels-last"].memory_format = "channels_last"
    if args.compile:
        start = time.perf_counter()
        compiled = torch.compile(build(args.variant))
        with torch.inference_mode():
            compiled(images)
        print(f"torch.compile: first call (compile) {time.perf_counter() - start:.1f} s")
        runs["compiled"] = compiled
    with torch.inference_mode():
        outputs = {name: model(images) for name, model in runs.items()}  # warm-up, and the outputs
        times = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, model in runs.items():
                start = time.perf_counter()
                model(images)
                times[name].append(time.perf_counter() - start)
    print(f"DCFormer-{args.variant}, input (1, 1, {', '.join(map(str, args.size))}) fp32, torch threads {torch.get_num_threads()}")
    for name in runs:
        diff = max(float((a - b).abs().max()) for a, b in zip(outputs[name], outputs["reference"]))
        print(f"{name:13s} s {_summary(times[name])}  max |output - reference| {diff:.1e}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name in ("reference", "default"):
            with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                runs[name](images)
            print(f"== {name}: operators by self CPU time, one forward")
            print(prof.key_averages(group_by_input_shape=True).table(
                sort_by="self_cpu_time_total", row_limit=10, max_name_column_width=28, max_shapes_column_width=60))
    for name in runs:
        if name != "reference":
            ratios = [a / b for a, b in zip(times[name], times["reference"])]
            print(f"ratio {name} / reference {_summary(ratios)}  target <= 0.6")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
