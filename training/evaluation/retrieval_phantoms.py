"""Text -> volume retrieval on held-out phantom cases, through the real index and search path: an
evaluation command with a pass mark (an accuracy gate, not a speed check).

    python -m napari_med3dvlm.phantoms split --out DATA --train 0 --test 200
    python -m training.evaluation.retrieval_phantoms --data DATA --db DB [--model embedded]

Indexes the test split's raw HU NIfTI volumes (exactly as a user's folder would be indexed), then
uses each case's report as a text query and reports recall@1/5/10 of that case's own volume, with
a chance baseline (k / N) from the same run. Exit status 1 when R@1 is below --min-r1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from napari_med3dvlm.retrieval import VolumeIndex, index_folder, search_text
from napari_med3dvlm.retrieval.embedder import get_embedder


def test_cases(data: Path, split: str, limit: int | None):
    """(case id, NIfTI path, report) for the split in M3D_Cap.json."""
    entries = json.loads((data / "M3D_Cap.json").read_text(encoding="utf-8"))[split]
    cases = []
    for entry in entries[:limit]:
        nifti = data / entry["image"].replace(".npy", ".nii.gz")
        if not nifti.is_file():
            raise FileNotFoundError(f"{nifti} is missing: write the split without --no-nifti")
        report = (data / entry["text"]).read_text(encoding="utf-8").strip()
        cases.append((nifti.parent.name, nifti, report))
    return cases


ATTRIBUTES = ("region", "phase", "plane", "findings")


def ground_truth(nifti: Path) -> dict | None:
    """Region, phase, plane and findings (kind and site) from the case's case.json, when present."""
    path = nifti.parent / "case.json"
    if not path.is_file():
        return None
    case = json.loads(path.read_text(encoding="utf-8"))
    findings = sorted((f["kind"], f["site"]) for f in case.get("findings", []))
    return {"region": case["region"], "phase": case["phase"], "plane": case["plane"], "findings": findings}


def link_folder(cases, folder: Path) -> None:
    """One folder holding only the split's volumes (symlinks), so the index sees nothing else."""
    folder.mkdir(parents=True, exist_ok=True)
    for case_id, nifti, _ in cases:
        link = folder / f"{case_id}.nii.gz"
        if not link.exists():
            os.symlink(nifti.resolve(), link)


def main(argv=None, after=None) -> int:
    """The command; ``after(index, embedder, first_query)`` runs once the scores are printed (the
    dock screenshot of scripts/retrieval_screenshot.py)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="phantom split root (with M3D_Cap.json)")
    parser.add_argument("--db", required=True, type=Path, help="index folder (created or refreshed)")
    parser.add_argument("--model", default="embedded", help="model source (default: the embedded demo model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--split", default="test")
    parser.add_argument("--n", type=int, default=200, help="cases (the first N of the split)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--min-r1", type=float, default=0.90)
    args = parser.parse_args(argv)

    cases = test_cases(args.data, args.split, args.n)
    volumes = args.db.with_name(args.db.name + ".volumes")
    link_folder(cases, volumes)
    embedder = get_embedder(args.model, args.device)
    print(f"model {embedder.model_id}, input {embedder.spatial_size}, {len(cases)} {args.split} cases")

    index = VolumeIndex(args.db)
    report = index_folder(index, volumes, embedder, batch_size=args.batch_size)
    print(f"index: {report.summary()}")
    if report.failed:
        print(f"{len(report.failed)} volumes failed to index, e.g. {report.failed[0]}", file=sys.stderr)

    ks = (1, 5, 10)
    hits_at = {k: 0 for k in ks}
    truth = {case_id: ground_truth(nifti) for case_id, nifti, _ in cases}
    shared = {name: 0 for name in ATTRIBUTES}
    start = time.perf_counter()
    for case_id, _, text in cases:
        ranked = [Path(hit.relative_path).name for hit in search_text(index, embedder, text, k=max(ks))]
        rank = ranked.index(f"{case_id}.nii.gz") + 1 if f"{case_id}.nii.gz" in ranked else None
        for k in ks:
            hits_at[k] += rank is not None and rank <= k
        top = truth.get(ranked[0].removesuffix(".nii.gz")) if ranked else None
        for name in ATTRIBUTES:
            shared[name] += bool(top and truth[case_id] and top[name] == truth[case_id][name])
    per_query = (time.perf_counter() - start) / max(1, len(cases)) * 1e3
    n = len(cases)
    for k in ks:
        print(f"text->volume R@{k:<2} {hits_at[k] / n:6.1%}   (chance {min(1.0, k / n):6.1%})")
    print(f"{per_query:.1f} ms per query (text encoding + search)")
    # What the encoder reads: how often the top hit shares each ground-truth attribute with the query.
    print("top hit shares " + ", ".join(f"{name} {shared[name] / n:.0%}" for name in ATTRIBUTES))
    r1 = hits_at[1] / n
    if after is not None:
        after(index, embedder, cases[0][2])
    print(f"R@1 {r1:.3f} {'>=' if r1 >= args.min_r1 else '<'} {args.min_r1}")
    return 0 if r1 >= args.min_r1 else 1


if __name__ == "__main__":
    sys.exit(main())
