"""Writing phantom splits in the M3D-Cap / M3D-VQA layouts.

Layout under the output root (paths in the JSON and CSVs are relative to it, as in M3D):

    M3D_Cap.json                       {"train": [...], "validation": [...], "test": [...]}
    M3D_VQA_{train,val,test}.csv       closed/open questions (M3D columns)
    M3D_VQA_yn_{train,val,test}.csv    yes/no questions
    M3D_Cap_npy/phantom/<id>/<Plane>_<phase>.npy   model input (1, D, H, W) float32 in [0, 1]
    M3D_Cap_npy/phantom/<id>/<Plane>_<phase>.nii.gz  raw HU, int16, spacing in the affine
    M3D_Cap_npy/phantom/<id>/<Plane>_<phase>_lesions.nii.gz  lesion labels on the same grid and
                                       affine, uint8: finding i of case.json is label i + 1
    M3D_Cap_npy/phantom/<id>/text.txt  the report
    M3D_Cap_npy/phantom/<id>/case.json ground truth
The .npy goes through `napari_med3dvlm.io.model_input`, the same call inference makes.
"""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .case import PhantomCase
from .generator import NATIVE_PIXELS, NATIVE_SLICES, render_case
from .report import write_report
from .sampling import sample_case
from .vqa import answer_prior, questions, yes_no_questions

VQA_COLUMNS = ["Image Path", "Text", "Question Type", "Question", "Choice A", "Choice B", "Choice C", "Choice D",
               "Answer", "Answer Choice"]
SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}
CSV_SPLIT = {"train": "train", "validation": "val", "test": "test"}
SUBDIR = "M3D_Cap_npy/phantom"
#: The lesion label map sits beside the raw volume: ``<Plane>_<phase>_lesions.nii.gz``.
LESIONS_SUFFIX = "_lesions"


@dataclass(frozen=True)
class WriteOptions:
    size: tuple[int, int, int] = (32, 128, 128)
    window: str | tuple[float, float] = "soft tissue"
    nifti: bool = True
    slices: int = NATIVE_SLICES
    pixels: int = NATIVE_PIXELS


def case_seed(seed: int, split: str, index: int) -> int:
    """Independent, reproducible seed per (run seed, split, index)."""
    return int(np.random.SeedSequence([seed, SPLIT_CODES[split], index]).generate_state(1)[0])


def series_name(case: PhantomCase) -> str:
    return f"{case.plane.capitalize()}_{case.phase.replace(' ', '_').replace('-', '_')}"


def is_written(root: Path, case: PhantomCase, options: WriteOptions) -> bool:
    """Whether a case's files are all on disk; ``case.json`` is written last, by rename, so its
    presence means the files before it are complete."""
    folder = Path(root) / SUBDIR / case.case_id
    stem = series_name(case)
    names = ["case.json", "text.txt", f"{stem}.npy"]
    if options.nifti:
        names += [f"{stem}.nii.gz", f"{stem}{LESIONS_SUFFIX}.nii.gz"]
    return all((folder / name).is_file() for name in names)


def write_case(root: Path, case: PhantomCase, options: WriteOptions, keep_written: bool = False) -> dict:
    """Render one case and write its files; returns its JSON entry, report and VQA rows.

    ``keep_written``: a case whose files are already complete is not rendered again (a resumed split);
    its entry and rows are recomputed from the seed, which is all they depend on.
    """
    if keep_written and is_written(root, case, options):
        return case_rows(case)
    from ..io import model_input  # torch import stays out of module import time

    image = render_case(case, slices=options.slices, pixels=options.pixels)
    folder = root / SUBDIR / case.case_id
    folder.mkdir(parents=True, exist_ok=True)
    stem = series_name(case)
    tensor, _ = model_input(image.volume, options.size, window=options.window)
    np.save(folder / f"{stem}.npy", tensor[0].numpy().astype(np.float32, copy=False))
    if options.nifti:
        import nibabel as nib

        nii = nib.Nifti1Image(*image.nifti_array_and_affine())
        nii.header.set_xyzt_units("mm", "sec")
        nii.header["descrip"] = b"synthetic phantom CT"
        nib.save(nii, folder / f"{stem}.nii.gz")
        labels = nib.Nifti1Image(*image.nifti_labels_and_affine())
        labels.header.set_xyzt_units("mm", "sec")
        labels.header["descrip"] = b"phantom lesions: finding i of case.json = i+1"
        labels.header.set_intent("label")  # a segmentation, not an image: indexers skip it
        nib.save(labels, folder / f"{stem}{LESIONS_SUFFIX}.nii.gz")
    (folder / "text.txt").write_text(write_report(case) + "\n", encoding="utf-8")
    partial = folder / ".case.json.tmp"
    partial.write_text(json.dumps(case.to_dict(), indent=1), encoding="utf-8")
    partial.replace(folder / "case.json")  # last, by rename: marks the case complete
    return case_rows(case)


def case_rows(case: PhantomCase) -> dict:
    """A case's M3D-Cap entry and its VQA and yes/no rows (no rendering: they depend on the seed only)."""
    report = write_report(case)
    stem = series_name(case)
    rel_image = f"{SUBDIR}/{case.case_id}/{stem}.npy"
    rng = random.Random(case.seed ^ 0x5EED)
    rows = []
    for qa in questions(case, rng):
        choices, letter = qa.closed(rng)
        rows.append([rel_image, report, qa.question_type, qa.question, *choices, qa.answer, letter])
    yn_rows = []
    for qtype, question, answer in yes_no_questions(case, rng):
        yn_rows.append([rel_image, report, qtype, question, "Yes", "No", "", "", answer, "A" if answer == "Yes" else "B"])
    return {
        "entry": {"image": rel_image, "text": f"{SUBDIR}/{case.case_id}/text.txt"},
        "vqa": rows,
        "yn": yn_rows,
    }


def _job(args) -> dict:
    root, split, index, seed, options, keep_written = args
    case = sample_case(case_seed(seed, split, index), case_id=f"{split}_{index:05d}")
    return write_case(Path(root), case, options, keep_written)


def _init_worker():
    import torch

    torch.set_num_threads(1)


def write_split(root, counts: dict[str, int], seed: int = 0, options: WriteOptions = WriteOptions(),
                workers: int = 2, progress=None, keep_written: bool = False) -> dict[str, int]:
    """Generate and write every split; returns the number of VQA rows per file.

    ``keep_written`` resumes an interrupted split: complete cases already on disk are kept (written
    with the same seed and options). ``M3D_Cap.json`` is written last, so its presence marks a
    complete split.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}
    jobs = [(str(root), split, i, seed, options, keep_written) for split, n in counts.items() for i in range(n)]
    if workers > 1 and len(jobs) > 1:
        answer_prior()  # computed once here; forked workers inherit it instead of recomputing
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(method)
        with ctx.Pool(workers, initializer=_init_worker) as pool:
            outputs = pool.imap(_job, jobs, chunksize=8)
            for job, out in zip(jobs, outputs):
                results.setdefault(job[1], []).append(out)
                if progress:
                    progress(sum(len(v) for v in results.values()), len(jobs))
    else:
        _init_worker()
        for job in jobs:
            results.setdefault(job[1], []).append(_job(job))
            if progress:
                progress(sum(len(v) for v in results.values()), len(jobs))

    written = {}
    for split, outs in results.items():
        for kind, prefix in (("vqa", "M3D_VQA_"), ("yn", "M3D_VQA_yn_")):
            name = f"{prefix}{CSV_SPLIT[split]}.csv"
            rows = [row for r in outs for row in r[kind]]
            with open(root / name, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(VQA_COLUMNS)
                writer.writerows(rows)
            written[name] = len(rows)
    cap = {split: [r["entry"] for r in results.get(split, [])] for split in ("train", "validation", "test")}
    partial = root / ".M3D_Cap.json.tmp"
    partial.write_text(json.dumps(cap, indent=1), encoding="utf-8")
    partial.replace(root / "M3D_Cap.json")
    return written
