"""Scoring relevance maps against the phantom generator's lesion masks.

Pointing game: a map *hits* when its maximum lies inside the named finding's mask, dilated by one
voxel at model resolution. Energy inside the mask: the map's share of its total mass that falls on
the (undilated) mask. Both are computed in model-input space, over focal findings a text names
correctly (kind and site read back by `napari_med3dvlm.phantoms.findings`), and against two
baselines that do not look at the image:

``uniform``   a constant map: its maximum is anywhere, so the expected hit rate is the dilated
              mask's share of the volume, and its energy inside is the mask's share.
``centre``    a Gaussian centred on the volume (sigma a quarter of each axis): it points at the
              centre voxel.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

#: Model voxels of tolerance around the mask for a hit.
TOLERANCE = 1


def labels_to_model(labels: np.ndarray, transform) -> np.ndarray:
    """A stack-order label map through `preprocess_volume`'s crop and resize (nearest, voxel
    centres), onto the model input grid."""
    start, stop = transform.crop_start, transform.crop_stop
    cropped = np.ascontiguousarray(labels[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]])
    tensor = torch.from_numpy(cropped.astype(np.float32))[None, None]
    out = F.interpolate(tensor, size=tuple(transform.output_shape), mode="nearest-exact")
    return out[0, 0].numpy().astype(labels.dtype)


def centre_prior(shape) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    exponent = sum(((g - (n - 1) / 2) / max(n / 4, 1e-3)) ** 2 for g, n in zip(grids, shape))
    return np.exp(-0.5 * exponent).astype(np.float32)


def _dilated(mask: np.ndarray, tolerance: int = TOLERANCE) -> np.ndarray:
    if tolerance <= 0:
        return mask
    return ndimage.binary_dilation(mask, structure=np.ones((3, 3, 3), bool), iterations=tolerance)


def point_scores(relevance: np.ndarray, mask: np.ndarray, tolerance: int = TOLERANCE) -> dict:
    """Pointing-game hit and energy inside ``mask`` for a map and both baselines (one finding)."""
    mask = mask.astype(bool)
    grown = _dilated(mask, tolerance)
    relevance = np.nan_to_num(np.asarray(relevance, dtype=np.float64)).clip(min=0)
    total = relevance.sum()
    centre = centre_prior(mask.shape)
    peak = np.unravel_index(int(np.argmax(relevance)), relevance.shape)
    middle = tuple(int(round((n - 1) / 2)) for n in mask.shape)
    return {
        "hit": bool(grown[peak]) if total > 0 else False,
        "energy": float(relevance[mask].sum() / total) if total > 0 else 0.0,
        "uniform_hit": float(grown.mean()),
        "uniform_energy": float(mask.mean()),
        "centre_hit": bool(grown[middle]),
        "centre_energy": float(centre[mask].sum() / centre.sum()),
    }


@dataclass
class PointingGame:
    """Accumulates `point_scores` over findings; `summary` gives the rates."""

    rows: list[dict] = field(default_factory=list)

    def add(self, relevance: np.ndarray, mask: np.ndarray, **info) -> dict:
        row = {**point_scores(relevance, mask), **info}
        self.rows.append(row)
        return row

    def summary(self) -> dict:
        n = len(self.rows)

        def mean(key):
            return round(float(np.mean([r[key] for r in self.rows])), 4) if n else None

        out = {"n": n}
        for name in ("", "uniform_", "centre_"):
            out[f"{name}hit_rate"] = mean(f"{name}hit")
            out[f"{name}energy"] = mean(f"{name}energy")
        return out


# ---------------------------------------------------------------------------------------- cases


def focal_matches(sentence: str, case) -> list[int]:
    """Indices of the case's focal findings that ``sentence`` names correctly (kind and site)."""
    from napari_med3dvlm.phantoms.case import FOCAL_KINDS, PhantomCase
    from napari_med3dvlm.phantoms.findings import read_sentence

    case = PhantomCase.from_dict(case) if isinstance(case, dict) else case
    read = read_sentence(sentence)
    return [i for i, f in enumerate(case.findings)
            if f.kind in FOCAL_KINDS and any(r.kind == f.kind and r.site == f.site for r in read)]


def case_input(case, size, window="soft tissue", folder: Path | None = None):
    """(model input (1, 1, D, H, W), transform, stack-order lesion labels) of a phantom case: from
    the split's raw and lesion NIfTIs when ``folder`` has them, else rendered from the case."""
    from napari_med3dvlm.io import preprocess_volume
    from napari_med3dvlm.phantoms.case import PhantomCase

    case = PhantomCase.from_dict(case) if isinstance(case, dict) else case
    lesions = sorted(folder.glob("*_lesions.nii.gz")) if folder is not None else []
    if lesions:
        import nibabel as nib

        raw = lesions[0].with_name(lesions[0].name.replace("_lesions.nii.gz", ".nii.gz"))
        stack = np.asarray(nib.load(raw).dataobj).transpose(2, 1, 0)
        labels = np.asarray(nib.load(lesions[0]).dataobj).transpose(2, 1, 0)
    else:
        from napari_med3dvlm.phantoms import render_case

        image = render_case(case)
        stack, labels = image.stack, image.finding_labels
    tensor, transform = preprocess_volume(stack, "CT", window=window, spatial_size=tuple(size))
    return tensor, transform, labels


def split_cases(root, split: str = "test", limit: int | None = None) -> list[tuple[Path, dict]]:
    """(case folder, case.json) of a phantom split in the M3D layout."""
    root = Path(root)
    entries = json.loads((root / "M3D_Cap.json").read_text())[split][:limit]
    out = []
    for entry in entries:
        folder = (root / entry["image"]).parent
        out.append((folder, json.loads((folder / "case.json").read_text())))
    return out


def report_pointing(model, tokenizer, reports: Iterable[str], cases: Iterable[tuple[Path | None, dict]],
                    method: str = "combined", log: Callable | None = None) -> dict:
    """The pointing game for generated reports: every sentence that names a focal finding of its
    case correctly is explained (`napari_med3dvlm.inference.relevance`) and scored on that finding."""
    from napari_med3dvlm.inference import relevance

    game = PointingGame()
    proj_out_num = int(model.config.proj_out_num)
    size = tuple(int(s) for s in model.config.image_size)
    sentences_total = 0
    for report, (folder, case) in zip(reports, cases):
        report = report.strip()
        image = transform = labels = None
        for start, end in relevance.sentence_spans(report):
            sentences_total += 1
            matches = focal_matches(report[start:end], case)
            if not matches:
                continue
            if image is None:
                image, transform, labels = case_input(case, size, folder=folder)
                labels_model = labels_to_model(labels, transform)
            result = relevance.explain(model, tokenizer, image, transform,
                                       relevance.report_target(proj_out_num, report, start, end), method)
            for index in matches:
                row = game.add(result.model_map, labels_model == index + 1, case=case["case_id"],
                               finding=index, sentence=report[start:end])
                if log:
                    log(row)
    return {**game.summary(), "sentences": sentences_total, "method": method, "tolerance_voxels": TOLERANCE}


def pointing_table(results: dict) -> str:
    """Markdown for the model card (empty when eval did not run the pointing game)."""
    rows = []
    for key, value in results.items():
        if not key.startswith("pointing") or not isinstance(value, dict) or "hit_rate" not in value:
            continue
        def f(v):
            return "n/a" if v is None else f"{v:.3f}"
        rows.append(f"| {key} ({value.get('method', '')}) | {value['n']} | {f(value['hit_rate'])} | "
                    f"{f(value['uniform_hit_rate'])} | {f(value['centre_hit_rate'])} | {f(value['energy'])} | "
                    f"{f(value['uniform_energy'])} | {f(value['centre_energy'])} |")
    if not rows:
        return ""
    head = ("| map | findings | pointing hit | uniform | centre prior | energy in mask | uniform | centre prior |\n"
            "|---|---|---|---|---|---|---|---|")
    return ("\n\nWhere the model looked (`training/evaluation/pointing.py`): for each report sentence that names "
            "a focal finding correctly, the relevance map's maximum inside the finding's mask (1-voxel "
            "tolerance at model resolution) and the map's energy inside it, against a uniform map and a "
            "centre prior:\n\n" + head + "\n" + "\n".join(rows))


def eval_pointing(model, tokenizer, config: dict, samples: dict, answers: list[str], limit: int = 20,
                  method: str = "combined") -> dict | None:
    """`report_pointing` for `training.stages.eval`: the first ``limit`` generated test reports of a
    phantom split (None for other data)."""
    from napari_med3dvlm.phantoms.writers import SUBDIR

    cases = samples.get("case") or []
    if not cases or any(c is None for c in cases):
        return None
    root = Path(config["data"]["root"]) / SUBDIR
    pairs = [(root / c["case_id"] if (root / c["case_id"]).is_dir() else None, c) for c in cases[:limit]]
    return report_pointing(model, tokenizer, answers[:limit], pairs, method)
