"""Held-out phantoms through the plugin's own paths, scored against the generator's ground truth.

    python -m training.evaluation.phantom_cli --data data/phantoms_heldout --out runs/heldout [--model embedded]

1. Writes a test split from a seed that no training run uses (``--seed``; training uses 0), with raw-HU
   NIfTI volumes, unless ``--data`` already holds one.
2. Reports: one ``napari-med3dvlm report`` process over every NIfTI file (the user's command line), then
   reads each report back into findings (`napari_med3dvlm.phantoms.findings`): finding precision,
   recall and F1 (all, focal, per kind and organ), exact finding set, technique accuracy; METEOR
   and BLEU-1 beside them.
3. Closed questions of the split through the Chat dock's code path (the engine and
   `Conversation.stream_answer`, as ``napari-med3dvlm ask --choices`` runs it) on the same NIfTI
   volumes: choices ranked, and letters generated.
4. The same for the blanked image (every voxel -1000 HU, so the model input is all zeros).

Writes ``results.json`` and prints one table, model against blanked image.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HELD_OUT_SEED = 20261202


def ensure_split(data: Path, count: int, seed: int) -> None:
    if (data / "M3D_Cap.json").exists():
        return
    from napari_med3dvlm.phantoms.writers import WriteOptions, write_split

    write_split(data, {"test": count}, seed=seed, options=WriteOptions(nifti=True), workers=2)


def cases_of(data: Path, limit: int | None) -> list[tuple[Path, str, dict]]:
    """(NIfTI path, reference report, ground truth) per test case."""
    entries = json.loads((data / "M3D_Cap.json").read_text(encoding="utf-8"))["test"][:limit]
    out = []
    for entry in entries:
        nifti = data / entry["image"].replace(".npy", ".nii.gz")
        out.append((nifti, (data / entry["text"]).read_text(encoding="utf-8").strip(),
                    json.loads((nifti.parent / "case.json").read_text(encoding="utf-8"))))
    return out


def blank_copies(niftis: list[Path], folder: Path) -> list[Path]:
    import nibabel as nib
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, path in enumerate(niftis):
        image = nib.load(str(path))
        target = folder / f"blank_{i:04d}.nii.gz"
        if not target.exists():
            blank = np.full(image.shape, -1000, dtype=np.int16)
            nib.save(nib.Nifti1Image(blank, image.affine, image.header), str(target))
        out.append(target)
    return out


def cli_reports(niftis: list[Path], out: Path, model: str, max_new_tokens: int) -> tuple[list[str], float]:
    """One ``napari-med3dvlm report`` process over every file; the report texts in input order."""
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "napari_med3dvlm", "report", *map(str, niftis), "--out", str(out),
               "--model", model, "--max-new-tokens", str(max_new_tokens), "--temperature", "0"]
    started = time.time()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    texts = [json.loads((out / f"report-{n:02d}.json").read_text())["report"] for n in range(1, len(niftis) + 1)]
    return texts, time.time() - started


def closed_questions(data: Path, nifti_of: dict[str, Path], limit: int | None) -> list[dict]:
    rows = []
    with open(data / "M3D_VQA_test.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            nifti = nifti_of.get(row["Image Path"])
            if nifti is not None:
                rows.append({"nifti": nifti, "question": row["Question"], "type": row["Question Type"],
                             "choices": [row[f"Choice {c}"] for c in "ABCD"], "letter": row["Answer Choice"]})
    return rows[:limit]


def closed_answers(rows: list[dict], model: str, mode: str, blank: dict[Path, Path] | None) -> list[str]:
    """Answers through the Chat dock's path (engine + Conversation), one fresh conversation each."""
    from napari_med3dvlm.inference import get_engine
    from napari_med3dvlm.inference.cli import load_volumes
    from napari_med3dvlm.inference.tasks import Conversation

    engine = get_engine()
    engine.update_settings(engine.settings.updated(model_source=model, closed_answer=mode, temperature=0.0,
                                                   max_new_tokens=24))
    volumes: dict[Path, object] = {}
    answers = []
    for row in rows:
        path = blank[row["nifti"]] if blank else row["nifti"]
        if path not in volumes:
            volumes[path] = load_volumes(path)[0]
        pieces = list(Conversation().stream_answer(engine, volumes[path], row["question"], row["choices"]))
        answers.append("".join(pieces).strip())
    return answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluation.phantom_cli", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="held-out split (written here if missing)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--questions", type=int, default=400, help="closed questions scored (each mode)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--no-blank", action="store_true", help="skip the blanked-image baseline")
    args = parser.parse_args(argv)

    from napari_med3dvlm.phantoms.findings import score_findings

    from . import closed_accuracy, text_metrics

    ensure_split(args.data, args.cases, args.seed)
    cases = cases_of(args.data, args.cases)
    niftis = [c[0] for c in cases]
    nifti_of = {str(p.relative_to(args.data)).replace(".nii.gz", ".npy"): p for p in niftis}
    rows = closed_questions(args.data, nifti_of, args.questions)
    blank = dict(zip(niftis, blank_copies(niftis, args.out / "blank_volumes"))) if not args.no_blank else None
    results: dict = {"data": str(args.data), "cases": len(cases), "questions": len(rows), "model": args.model}
    for variant in ("model", "blank") if blank else ("model",):
        inputs = [blank[p] for p in niftis] if variant == "blank" else niftis
        texts, seconds = cli_reports(inputs, args.out / f"reports_{variant}", args.model, args.max_new_tokens)
        part = {"report_seconds": round(seconds, 1)}
        part["findings"] = score_findings(texts, [c[2] for c in cases])
        part["text"] = text_metrics(texts, [c[1] for c in cases], ("bleu1", "meteor"))
        for mode in ("score", "generate"):
            answers = closed_answers(rows, args.model, mode, blank if variant == "blank" else None)
            part[f"closed_{mode}"] = closed_accuracy(answers, [r["letter"] for r in rows], [r["type"] for r in rows])
        results[variant] = part
        with open(args.out / f"predictions_{variant}.jsonl", "w", encoding="utf-8") as handle:
            for (nifti, reference, truth), text in zip(cases, texts):
                handle.write(json.dumps({"case": truth["case_id"], "report": text, "reference": reference}) + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(format_table(results))
    return 0


def format_table(results: dict) -> str:
    def row(name, *path):
        values = []
        for variant in ("model", "blank"):
            node = results.get(variant)
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            values.append("-" if node is None else f"{node:.3f}")
        return f"| {name} | {values[0]} | {values[1]} |"

    lines = ["| metric | model | blanked image |", "|---|---|---|",
             row("report finding F1", "findings", "finding", "f1"),
             row("report finding precision", "findings", "finding", "precision"),
             row("report finding recall", "findings", "finding", "recall"),
             row("report focal finding F1", "findings", "focal", "f1"),
             row("report exact finding set", "findings", "exact_set"),
             row("report technique (region, phase, plane)", "findings", "technique"),
             row("report METEOR", "text", "meteor"), row("report BLEU-1", "text", "bleu1")]
    for mode, label in (("score", "choices ranked"), ("generate", "letter generated")):
        lines.append(row(f"closed VQA, {label}", f"closed_{mode}", "accuracy", "overall"))
        for category in sorted(results["model"][f"closed_{mode}"]["accuracy"]):
            if category != "overall":
                lines.append(row(f"... {category}", f"closed_{mode}", "accuracy", category))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
