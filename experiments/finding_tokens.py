"""Does the language model read the findings off the image, before greedy reports show it?

    python experiments/finding_tokens.py --data data/phantoms --model training/checkpoints/demo-candidate \
        [--model OTHER_FOLDER ...] [--n 200] [--distractors 3]

The teacher-forced measures of `training.evaluation.finding_tokens` (loss per token kind with the
real and the blanked volume, and the own report ranked against same-region reports with other
findings) on finished model folders, over the phantom test split (cases no training run used).
Prints one JSON line per model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(model_source: str, root: Path, limit: int, distractors: int) -> dict:
    import torch

    from napari_med3dvlm.model.auto import load_vlm
    from training.data.m3d import load_image
    from training.evaluation.finding_tokens import phantom_reports, score_reports

    model, tokenizer = load_vlm(model_source, dtype=torch.float32)
    entries = json.loads((root / "M3D_Cap.json").read_text(encoding="utf-8"))["test"][:limit]
    reports = phantom_reports(root, entries)
    start = time.perf_counter()
    with torch.no_grad():
        real = [model.encode_images(load_image(root / image)[None]) for image, _, _ in reports]
        blank = model.encode_images(torch.zeros_like(load_image(root / reports[0][0])[None]))
    scores = score_reports(model, tokenizer, reports, {"real": real, "blank": [blank] * len(real)}, distractors)
    return {"model": model_source, "cases": len(reports), "distractors": distractors, **scores,
            "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/phantoms"))
    parser.add_argument("--model", action="append", required=True, help="a model folder (repeatable)")
    parser.add_argument("--n", type=int, default=200, help="test cases")
    parser.add_argument("--distractors", type=int, default=3)
    args = parser.parse_args(argv)
    for source in args.model:
        print(json.dumps(measure(source, args.data, args.n, args.distractors)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
