"""`python -m napari_med3dvlm.phantoms split|case|gallery`: write a phantom data set, show one case, or
save the documentation screenshots."""

from __future__ import annotations

import argparse
import json
import sys
import time


def _window(text: str):
    if "," in text:
        center, width = text.split(",")
        return (float(center), float(width))
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m napari_med3dvlm.phantoms",
                                     description="Synthetic CT phantoms with reports and VQA in the M3D layouts.")
    sub = parser.add_subparsers(dest="command", required=True)
    split = sub.add_parser("split", help="write train/validation/test splits (M3D-Cap JSON, M3D-VQA CSVs, volumes)")
    split.add_argument("--out", required=True, help="output root folder")
    split.add_argument("--train", type=int, default=2000)
    split.add_argument("--validation", type=int, default=0)
    split.add_argument("--test", type=int, default=200)
    split.add_argument("--size", type=int, nargs=3, default=(32, 128, 128), metavar=("D", "H", "W"),
                       help="model input size of the .npy volumes")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--workers", type=int, default=2)
    split.add_argument("--window", type=_window, default="soft tissue", help="preset name or CENTER,WIDTH")
    split.add_argument("--no-nifti", action="store_true", help="skip the raw HU .nii.gz files")
    split.add_argument("--native", type=int, nargs=2, default=None, metavar=("SLICES", "PIXELS"),
                       help="native phantom grid: slices along the stack axis and in-plane pixels")
    split.set_defaults(func=run_split)
    case = sub.add_parser("case", help="print one case's ground truth, report and questions")
    case.add_argument("seed", type=int)
    case.set_defaults(func=run_case)
    gallery = sub.add_parser("gallery", help="save napari screenshots of the documentation cases (needs a display)")
    gallery.add_argument("--out", required=True, help="folder for phantom_<name>.png")
    gallery.set_defaults(func=run_gallery)
    return parser


def run_gallery(args) -> int:
    from .gallery import save_gallery

    for name, info in save_gallery(args.out).items():
        print(f"{name} ({info['window']} window, slice {info['slice']}): {info['report']}")
    return 0


def run_split(args) -> int:
    from .writers import WriteOptions, write_split

    kwargs = {}
    if args.native:
        kwargs = {"slices": args.native[0], "pixels": args.native[1]}
    options = WriteOptions(size=tuple(args.size), window=args.window, nifti=not args.no_nifti, **kwargs)
    counts = {"train": args.train, "validation": args.validation, "test": args.test}
    counts = {k: v for k, v in counts.items() if v > 0}
    start = time.perf_counter()
    total = sum(counts.values())

    def progress(done, total):
        if done % 200 == 0 or done == total:
            print(f"{done}/{total} cases, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)

    written = write_split(args.out, counts, seed=args.seed, options=options, workers=args.workers, progress=progress)
    elapsed = time.perf_counter() - start
    print(json.dumps({"cases": total, "seconds": round(elapsed, 1), "files": written}, indent=1))
    return 0


def run_case(args) -> int:
    import random

    from .report import write_report
    from .sampling import sample_case
    from .vqa import questions, yes_no_questions

    case = sample_case(args.seed)
    print(json.dumps(case.to_dict(), indent=1))
    print(write_report(case))
    rng = random.Random(0)
    for qa in questions(case, rng):
        print(f"[{qa.question_type}] {qa.question} -> {qa.answer}")
    for qtype, q, a in yes_no_questions(case, rng):
        print(f"[{qtype}] {q} -> {a}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
