"""Does the projector pass the lesions on? Linear probes of focal lesion kinds (and of region, phase and
plane), per case, on the tokens the projector reads (DCFormer stages 3 and 4) and on the image
embeddings it hands the language model.

    python experiments/projector_probe.py --preset demo --stage finetune --stage projector --stage random
    python experiments/projector_probe.py --preset demo_phase --projector runs/X/finetune/checkpoints/step-800/model.safetensors

The image tower is the SigLIP stage's (what the LLM stages freeze). For each ``--stage`` the projector
comes from that stage's result (``random``: a freshly initialised one, the control). Features of the
training split's volumes train one logistic regression per focal kind (cyst, mass, calcification,
haemorrhage: is there one anywhere in the case); the test split's volumes score it (ROC AUC). Labels
come from each case's ``case.json``, the generator's ground truth; the model's input is the volume only.
Beside each probe, ``variance_share``: how much of the raw features' variance each label accounts for
(`variance_fraction`). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FOCAL = ("cyst", "mass", "calcification", "haemorrhage")


TECHNIQUE = ("region", "phase", "plane")


def case_labels(dataset) -> tuple[list[list[int]], list[list[str]]]:
    """Per case: focal kinds present (0/1 each) and its region, phase and plane."""
    rows, technique = [], []
    for entry in dataset.entries:
        case = json.loads((Path(dataset.root) / entry["image"]).parent.joinpath("case.json").read_text())
        kinds = {finding["kind"] for finding in case["findings"]}
        rows.append([int(kind in kinds) for kind in FOCAL])
        technique.append([str(case[key]) for key in TECHNIQUE])
    return rows, technique


def variance_fraction(x, labels) -> float:
    """Share of the features' total variance that lies between the classes of ``labels``: sum over classes
    of (class share) x |class mean - mean|^2, over the mean squared distance to the mean. A linear probe
    standardises every feature first and can find a lesion in one direction of a thousand; the language
    model reads the raw embeddings, where a signal this share of the variance is what its gradients see."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels)
    centred = x - x.mean(0)
    total = float((centred ** 2).sum(1).mean())
    between = sum(float((labels == c).mean()) * float((centred[labels == c].mean(0) ** 2).sum())
                  for c in np.unique(labels))
    return between / total if total > 0 else 0.0


def probe_auc(train_x, train_y, train_t, test_x, test_y, test_t) -> dict:
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scores = {}
    for k, kind in enumerate(FOCAL):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=3000))
        probe.fit(train_x, train_y[:, k])
        scores[kind] = round(float(roc_auc_score(test_y[:, k], probe.predict_proba(test_x)[:, 1])), 4)
    scores["mean"] = round(float(np.mean([scores[kind] for kind in FOCAL])), 4)
    for k, key in enumerate(TECHNIQUE):  # accuracy of one multinomial probe per technique attribute
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=3000))
        probe.fit(train_x, train_t[:, k])
        scores[f"{key}_accuracy"] = round(float((probe.predict(test_x) == test_t[:, k]).mean()), 4)
    scores["variance_share"] = {  # on the training split: how large each signal is in the raw features
        **{kind: round(variance_fraction(train_x, train_y[:, k]), 4) for k, kind in enumerate(FOCAL)},
        **{key: round(variance_fraction(train_x, train_t[:, k]), 4) for k, key in enumerate(TECHNIQUE)}}
    return scores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--stage", action="append", default=None,
                        help="projector source: projector, finetune or random (repeatable)")
    parser.add_argument("--projector", action="append", default=[], metavar="SAFETENSORS",
                        help="also probe the projector in this file: a training checkpoint's model.safetensors "
                             "or an embedded model folder's weights (repeatable)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from training.builders import build_vlm
    from training.config import apply_overrides, load_preset
    from training.data import sources
    from training.data.features import build_cache
    from training.stages.common import load_result, load_vision_tower, subset

    torch.set_num_threads(int(load_preset(args.preset).get("train", {}).get("num_threads", 2)))
    config = apply_overrides(load_preset(args.preset), args.overrides)
    model, _ = build_vlm(config, with_tokenizer=False)
    if not load_vision_tower(model.vision_tower, config, "siglip"):
        print("error: the siglip stage has no result to take the image tower from", file=sys.stderr)
        return 2
    model.eval()
    splits = {split: sources.caption_dataset(config, split) for split in ("train", "test")}
    cache_dir = Path(config["output_dir"]) / "vision_cache"  # the LLM stages' cache: same tower, same key
    tokens, labels, techniques = {}, {}, {}
    for split, dataset in splits.items():
        cache = build_cache(model, [dataset], cache_dir)
        paths = [entry["image"] for entry in dataset.entries]
        low = torch.stack([cache[f"{p}::low"] for p in paths]).float()
        high = torch.stack([cache[f"{p}::high"] for p in paths]).float()
        tokens[split] = (low, high)
        kinds, technique = case_labels(dataset)
        labels[split], techniques[split] = np.asarray(kinds), np.asarray(technique)

    def flat(t):
        return t.reshape(len(t), -1).numpy()

    results = {"train_cases": len(labels["train"]), "test_cases": len(labels["test"]),
               "test_positives": dict(zip(FOCAL, labels["test"].sum(0).tolist()))}
    train_l, test_l = (labels["train"], techniques["train"]), (labels["test"], techniques["test"])
    results["s3_tokens"] = probe_auc(flat(tokens["train"][0]), *train_l, flat(tokens["test"][0]), *test_l)
    results["s3_s4_tokens"] = probe_auc(
        np.concatenate([flat(tokens["train"][0]), flat(tokens["train"][1])], 1), *train_l,
        np.concatenate([flat(tokens["test"][0]), flat(tokens["test"][1])], 1), *test_l)
    initial = {k: v.clone() for k, v in model.mm_projector.state_dict().items()}
    for path in args.projector:
        from safetensors.torch import load_file

        state = load_file(path)
        prefix = next((p for p in ("vlm.mm_projector.", "mm_projector.") if any(k.startswith(p) for k in state)), None)
        if prefix is None:
            print(f"error: {path} holds no projector weights", file=sys.stderr)
            return 2
        model.mm_projector.load_state_dict(subset(state, prefix), strict=True)
        with torch.no_grad():
            embedded = {split: model.mm_projector(*tokens[split]) for split in tokens}
        results[f"projector {path}"] = probe_auc(flat(embedded["train"]), *train_l, flat(embedded["test"]), *test_l)
    for stage in args.stage or (["finetune", "projector", "random"] if not args.projector else []):
        if stage == "random":
            model.mm_projector.load_state_dict(initial)
        else:
            state = load_result(config, stage, required=False)
            if not state:
                results[f"projector_{stage}"] = "no result"
                continue
            model.mm_projector.load_state_dict(subset(state, "mm_projector."), strict=True)
        with torch.no_grad():
            embedded = {split: model.mm_projector(*tokens[split]) for split in tokens}
        results[f"projector_{stage}"] = probe_auc(flat(embedded["train"]), *train_l, flat(embedded["test"]), *test_l)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
