"""The phantom split a demo preset trains on, written when ``all`` finds it missing.

A preset describes its split in ``data.phantoms`` (and a larger SigLIP copy in
``siglip.data_phantoms``): case counts, seed and whether to keep the raw NIfTI files; the volume size
and window are the preset's ``data.image_size`` and ``data.window``. Writing goes through the same
function as ``python -m napari_med3dvlm.phantoms split`` and is resumable: cases already complete on
disk are kept, so an interrupted write continues where it stopped. ``phantom_split.json`` in the
folder records what was asked for; a folder written with other settings is refused, not mixed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .checks import DataRoot, InputError, data_root, preset_name

SPEC_FILE = "phantom_split.json"


def counts_of(spec: dict) -> dict[str, int]:
    counts = {split: int(spec.get(split, default)) for split, default in
              (("train", 2000), ("validation", 0), ("test", 200))}
    return {split: n for split, n in counts.items() if n > 0}


def missing_roots(config: dict, stages: list[str]) -> list[DataRoot]:
    """The phantom splits the given stages read that are not on disk yet (each folder once)."""
    seen, missing = set(), []
    for stage in stages:
        if stage == "vision":
            continue  # renders its own phantoms
        root = data_root(config, stage)
        if root.root in seen or root.phantoms is None or root.written(config):
            continue
        seen.add(root.root)
        missing.append(root)
    return missing


def _recorded(config: dict, root: DataRoot) -> dict:
    spec = root.phantoms or {}
    return {"counts": counts_of(spec), "seed": int(spec.get("seed", 0)),
            "size": [int(v) for v in config["data"]["image_size"]],
            "window": config["data"].get("window", "soft tissue"), "nifti": bool(spec.get("nifti", False))}


def write_phantom_split(config: dict, root: DataRoot) -> dict:
    """Write (or finish writing) one phantom split with a progress bar; returns the rows per file."""
    from tqdm.auto import tqdm

    from napari_med3dvlm.phantoms.writers import WriteOptions, write_split

    folder = Path(root.root)
    wanted = _recorded(config, root)
    marker = folder / SPEC_FILE
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) != wanted:
        raise InputError(f"{folder} holds part of a phantom split written with other settings ({marker}): "
                         f"remove the folder or point {root.spelled} elsewhere (preset {preset_name(config)})")
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(wanted, indent=1), encoding="utf-8")
    window = wanted["window"]
    options = WriteOptions(size=tuple(wanted["size"]), window=tuple(window) if isinstance(window, list) else window,
                           nifti=wanted["nifti"])
    total = sum(wanted["counts"].values())
    workers = int((root.phantoms or {}).get("workers") or min(os.cpu_count() or 1, 8))
    start = time.perf_counter()
    with tqdm(total=total, desc=f"phantom split {folder}", unit="case") as bar:
        def progress(done, _total):
            bar.update(done - bar.n)

        written = write_split(folder, wanted["counts"], seed=wanted["seed"], options=options, workers=workers,
                              progress=progress, keep_written=True)
    print(f"[data] {folder}: {total} cases in {time.perf_counter() - start:.0f} s ({json.dumps(written)})")
    return written
