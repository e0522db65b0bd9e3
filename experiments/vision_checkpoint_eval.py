"""Score the newest checkpoint of a vision-stage run on the test phantoms, with every metric the
stage's evaluation records (per focal kind included), without training a step.

    python experiments/vision_checkpoint_eval.py --preset demo

Reads ``<output_dir>/vision/checkpoints/step-*`` (the newest complete one) and the stage's cached
dense targets; prints one JSON line.

    python experiments/vision_checkpoint_eval.py --preset demo --encoder-from siglip

keeps the vision stage's heads and swaps in the image tower of a later stage (its newest checkpoint,
else its result): what the dense and s3 token-kind heads still read from the encoder after SigLIP
trained it, i.e. whether the lesion features the projector reads survived.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--encoder-from", metavar="STAGE", default=None,
                        help="swap in the image tower of this stage (e.g. siglip), heads kept")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    from safetensors.torch import load_file

    from training.config import apply_overrides, load_preset
    from training.data.dense import DenseDataset
    from training.loop import STATE_FILE, latest_checkpoint
    from training.stages.common import stage_dir
    from training.stages.vision import build_model, dense_caches
    from training.vision.config import VisionConfig
    from training.vision.metrics import evaluate_findings

    config = apply_overrides(load_preset(args.preset), args.overrides)
    vision = VisionConfig.from_preset(config)
    checkpoint = latest_checkpoint(stage_dir(config, "vision") / "checkpoints")
    if checkpoint is None:
        print("error: no complete checkpoint of the vision stage", file=sys.stderr)
        return 2
    state = json.loads((checkpoint / STATE_FILE).read_text())
    model = build_model(vision)
    model.load_state_dict(load_file(str(checkpoint / "model.safetensors")), strict=True)
    source = None
    if args.encoder_from:
        from training.stages.common import load_vision_tower, subset

        later = latest_checkpoint(stage_dir(config, args.encoder_from) / "checkpoints")
        if later is not None:  # a running or stopped stage: its newest checkpoint's image tower
            source = str(later)
            model.encoder.load_state_dict(subset(load_file(str(later / "model.safetensors")), "vision_encoder."),
                                          strict=True)
        elif load_vision_tower(model.encoder, config, args.encoder_from):  # a finished stage's result
            source = f"{args.encoder_from} result"
        else:
            print(f"error: {args.encoder_from} has neither a checkpoint nor a result", file=sys.stderr)
            return 2
    _, test_cache = dense_caches(config, vision)
    scores = evaluate_findings(model, DenseDataset(test_cache.open()))
    print(json.dumps({"step": state["global_step"], "elapsed_h": round(state["elapsed_s"] / 3600, 2),
                      "encoder": source or "vision", "test": scores}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
