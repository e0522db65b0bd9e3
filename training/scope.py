"""Scope statistics: what the model's features look like on its training data, so the plugin can say
when a scan is outside what the model knows (``napari_med3dvlm.model.scope``).

``python -m training.scope --preset demo`` reads the preset's training split and model folder
(``merge.embedded_output``, else ``merge.output``) and writes ``scope.json`` and ``scope.safetensors``
into that folder. For any other model folder (the published weights) pass ``--model FOLDER --data
ROOT`` with a training split in the M3D-Cap layout. The merge stage calls `write_scope` too, so a
retrained demo model ships with fresh statistics.

What is stored:
- ``vlm``: a low-rank Gaussian of the projector output (mean and spread over the image embeddings,
  the features the LLM reads) and the distance threshold: the ``quantile`` of out-of-fold distances
  of the training cases;
- ``siglip``: the same for the SigLIP image embedding (the retrieval index's vectors), when the
  folder has a SigLIP encoder;
- the modalities, the slice and pixel spacing ranges and the minimum slice count of the training
  data (rendered again from the phantom seeds for a phantom split).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from napari_med3dvlm.model.scope import ScopeProfile, fit_feature_stats, siglip_feature, vlm_feature, weight_files
from napari_med3dvlm.model.sources import SIGLIP_SUBFOLDER, content_fingerprint

#: Training cases encoded for the statistics (``scope.cases`` in a preset, ``--cases`` here): 800 take
#: about 2 CPU minutes and put the 99.5 % threshold on 800 out-of-fold distances.
DEFAULT_CASES = 800

DEMO_ADVICE = "The demo model knows phantom CT only: for real scans, load the published Med3DVLM weights (Settings > Model source)."


def _entries(root: Path, cap_json: str, limit: int | None) -> list[dict]:
    path = Path(cap_json)
    if not path.is_absolute():
        path = root / path
    entries = json.loads(path.read_text(encoding="utf-8"))["train"]
    return entries[:limit] if limit else entries


def training_features(model, siglip, root, entries, batch_size: int = 16, progress=None) -> dict[str, torch.Tensor]:
    """``{"vlm": (N, 2H), "siglip": (N, E)}`` for the training images, as the models see them."""
    from training.data.m3d import load_image

    root = Path(root)
    vlm, sig = [], []
    param = next(model.vision_tower.parameters())
    for start in range(0, len(entries), batch_size):
        batch = torch.stack([load_image(root / e["image"]) for e in entries[start : start + batch_size]])
        with torch.inference_mode():
            vlm.append(vlm_feature(model.encode_images(batch.to(param.device, param.dtype))).cpu())
            if siglip is not None:
                sp = next(siglip.parameters())
                sig.append(siglip_feature(siglip.encode_image(batch.to(sp.device, sp.dtype)).float().cpu()))
        if progress:
            progress(min(start + batch_size, len(entries)), len(entries))
    out = {"vlm": torch.cat(vlm)}
    if sig:
        out["siglip"] = torch.cat(sig)
    return out


def phantom_geometry(root, entries, cases: int = 90) -> dict | None:
    """Spacing ranges and slice counts of a phantom split, rendered again from each case's seed (the
    split stores model-input .npy files, which have no spacing). None for other data."""
    from napari_med3dvlm.io import acquisition_view
    from napari_med3dvlm.phantoms import render_case, sample_case

    root = Path(root)
    seeds = []
    for entry in entries:
        case_file = (root / entry["image"]).parent / "case.json"
        if not case_file.is_file():
            return None
        seeds.append(json.loads(case_file.read_text(encoding="utf-8")))
        if len(seeds) >= cases:
            break
    slices, pixel, count = [], [], []
    for info in seeds:
        image = render_case(sample_case(int(info["seed"]), case_id=info["case_id"])).volume
        stack, spacing = acquisition_view(image)
        slices.append(spacing[0])
        pixel.append(max(spacing[1], spacing[2]))
        count.append(min(stack.shape))
    return {
        "slice_spacing": (float(min(slices)), float(max(slices))),
        "pixel_spacing": (float(min(pixel)), float(max(pixel))),
        "min_slices": max(8, int(min(count)) // 3),
    }


def build_profile(
    model,
    siglip,
    root,
    entries,
    modalities=("CT",),
    training_data: str = "",
    advice: str | None = None,
    components: int = 16,
    quantile: float = 0.995,
    geometry_cases: int = 90,
    progress=None,
) -> ScopeProfile:
    features = training_features(model, siglip, root, entries, progress=progress)
    profile = ScopeProfile(
        modalities=tuple(m.upper() for m in modalities),
        training_data=training_data,
        source="scope.json",
    )
    if advice:
        profile.advice = advice
    geometry = phantom_geometry(root, entries, geometry_cases)
    if geometry:
        profile.slice_spacing = geometry["slice_spacing"]
        profile.pixel_spacing = geometry["pixel_spacing"]
        profile.min_slices = geometry["min_slices"]
    for kind, values in features.items():
        profile.features[kind] = fit_feature_stats(values, components=components, quantile=quantile)
    return profile


def save_profile(profile: ScopeProfile, folder) -> dict:
    """Write the profile into a model folder, recording which weights its statistics belong to."""
    folder = Path(folder)
    for kind, stats in profile.features.items():
        stats.info["weights"] = content_fingerprint(weight_files(folder, kind))
    json_path, tensor_path = profile.save(folder)
    summary = {kind: {k: stats.info[k] for k in ("threshold", "cases", "heldout_flagged")} for kind, stats in profile.features.items()}
    summary["files"] = [json_path.name, tensor_path.name]
    return summary


def _is_phantom_split(root: Path, entries) -> bool:
    return bool(entries) and ((root / entries[0]["image"]).parent / "case.json").is_file()


def write_scope(config: dict, model, siglip, folders, limit: int | None = None, progress=None) -> dict:
    """Compute the statistics on the preset's training split and write them into each folder."""
    data = config["data"]
    root = Path(data["root"])
    scope = config.get("scope", {})
    entries = _entries(root, data.get("cap_json", "M3D_Cap.json"), limit or scope.get("cases", DEFAULT_CASES))
    phantom = _is_phantom_split(root, entries)
    profile = build_profile(
        model,
        siglip,
        root,
        entries,
        modalities=scope.get("modalities") or (["CT"] if phantom else ["CT", "MR"]),
        training_data=scope.get("training_data") or ("synthetic phantom CT" if phantom else ""),
        advice=scope.get("advice") or (DEMO_ADVICE if phantom else None),
        components=int(scope.get("components", 16)),
        quantile=float(scope.get("quantile", 0.995)),
        progress=progress,
    )
    summaries = {}
    for folder in folders:
        if folder and Path(folder).is_dir():
            summaries[str(folder)] = save_profile(_only_present(profile, Path(folder)), folder)
    return summaries


def _only_present(profile: ScopeProfile, folder: Path) -> ScopeProfile:
    """The profile without SigLIP statistics for a folder that has no SigLIP encoder."""
    from copy import copy

    out = copy(profile)
    out.features = {k: v for k, v in profile.features.items() if k != "siglip" or (folder / SIGLIP_SUBFOLDER).is_dir()}
    return out


def _load_models(folder: str, device: str):
    from napari_med3dvlm.model import load_siglip, load_vlm

    model, _ = load_vlm(folder, device=device, dtype=torch.float32)
    try:
        siglip, _ = load_siglip(folder, device=device, dtype=torch.float32)
    except Exception as err:  # noqa: BLE001 - a VLM folder without SigLIP: VLM statistics only
        print(f"no SigLIP encoder in the model folder ({type(err).__name__}); VLM statistics only", file=sys.stderr)
        siglip = None
    return model.eval(), siglip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.scope", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="demo", help="preset whose data split and model folder are used")
    parser.add_argument("--model", help="model folder (default: the preset's merge.embedded_output or merge.output)")
    parser.add_argument("--data", help="training split root in the M3D-Cap layout (default: the preset's data.root)")
    parser.add_argument("--cap-json", help="M3D-Cap JSON relative to --data (default: the preset's)")
    parser.add_argument("--cases", type=int, help=f"use the first N training cases (default: {DEFAULT_CASES})")
    parser.add_argument("--modalities", nargs="+", help="modalities the model was trained on (default: CT for phantoms)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args(argv)

    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .config import load_preset

    config = load_preset(args.preset)
    if args.data:
        config["data"]["root"] = args.data
    if args.cap_json:
        config["data"]["cap_json"] = args.cap_json
    if args.modalities:
        config.setdefault("scope", {})["modalities"] = args.modalities
    if args.threads:
        torch.set_num_threads(args.threads)
    merge = config.get("merge", {})
    folder = args.model or merge.get("embedded_output") or merge.get("output")
    start = time.time()
    model, siglip = _load_models(folder, args.device)

    def progress(done, total):
        if done % 256 < 16 or done == total:
            print(f"{done}/{total} training cases encoded, {time.time() - start:.0f} s", file=sys.stderr, flush=True)

    summary = write_scope(config, model, siglip, [folder], limit=args.cases, progress=progress)
    print(json.dumps({"seconds": round(time.time() - start, 1), **summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
