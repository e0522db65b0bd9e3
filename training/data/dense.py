"""Dense, located supervision from the phantom generator: what the `vision` stage trains on.

The generator knows where every finding and organ is. For each case this module renders the volume
exactly as the M3D writer does (same seed, same `preprocess_volume` call, so the image equals the
split's ``.npy``), and carries the finding and organ label maps through the same crop and resize.
The labels are supervision only: they never enter the model's input.

Per case the cache keeps (on disk, memory-mapped):

* ``image``  uint8 (D, H, W): the model input in [0, 1], quantised to 1/255 (the image noise is
  about ten times larger than that step);
* ``kind``   uint8 (D/2, H/2, W/2): 0 where no finding, else the finding kind's index + 1
  (`DenseDataset` turns it into per-cell presence on the encoder's stride-8 grid);
* ``organ``  uint8 (D/2, H/2, W/2): the generator's organ label;
* ``labels`` uint8 (L,): which (kind, site) pairs of `FINDING_LABELS` the case holds.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_med3dvlm.phantoms.anatomy import LABEL
from napari_med3dvlm.phantoms.case import FOCAL_KINDS, KINDS, PHASES, PLANES, REGIONS, PhantomCase
from napari_med3dvlm.phantoms.sampling import CATALOGUE, compatible, draw_finding, draw_technique, sample_case

#: Every (kind, site) the generator can draw, in a fixed order: the global label vector.
FINDING_LABELS: tuple[tuple[str, str], ...] = tuple(
    sorted({(kind, site) for (kind, _organ), (_region, sites, _size, _n) in CATALOGUE.items() for site in sites})
)
LABEL_INDEX = {label: i for i, label in enumerate(FINDING_LABELS)}
#: The kind index of each entry of `FINDING_LABELS`.
LABEL_KIND = np.array([KINDS.index(kind) for kind, _site in FINDING_LABELS])
NUM_KINDS = len(KINDS)
NUM_ORGANS = max(LABEL.values()) + 1
#: The label maps are stored at half the model resolution on every axis.
LABEL_STRIDE = 2
#: A case's technique as the technique head predicts it: one class per attribute, in this order.
TECHNIQUE = (("region", REGIONS), ("phase", PHASES), ("plane", PLANES))


def technique_targets(cases: list[dict]) -> np.ndarray:
    """(N, 3) int64: each case's region, contrast phase and plane as indices into `TECHNIQUE`."""
    return np.array([[values.index(case[name]) for name, values in TECHNIQUE] for case in cases], dtype=np.int64)


def case_labels(case: PhantomCase) -> np.ndarray:
    out = np.zeros(len(FINDING_LABELS), dtype=np.uint8)
    for f in case.findings:
        out[LABEL_INDEX[(f.kind, f.site)]] = 1
    return out


#: Share of lesion-rich training cases drawn with no focal finding (they keep the hard negatives).
LESION_RICH_EMPTY = 0.15


def sample_lesion_rich_case(seed: int, case_id: str | None = None, most: int = 4) -> PhantomCase:
    """A training case with up to ``most`` focal lesions at distinct sites of one region (the benchmark's
    cases hold about one), and a diffuse finding a third of the time.

    Supervision only: it changes how often the dense targets hold a lesion, not what a lesion or an
    organ looks like (the same `draw_finding` and compatibility rules as `sample_case`). Test splits
    always use `sample_case`."""
    rng = np.random.default_rng(seed)
    region = REGIONS[rng.integers(len(REGIONS))]
    phase, plane, scale = draw_technique(rng)
    findings = []
    options = [(k, o) for (k, o), v in CATALOGUE.items() if v[0] == region]
    focal = [ko for ko in options if ko[0] in FOCAL_KINDS]
    diffuse = [ko for ko in options if ko[0] not in FOCAL_KINDS]
    if rng.random() < 1 / 3:
        findings.append(draw_finding(rng, *diffuse[rng.integers(len(diffuse))]))
    wanted = 0 if rng.random() < LESION_RICH_EMPTY else int(rng.integers(1, most + 1))
    attempts = 0
    while sum(f.kind in FOCAL_KINDS for f in findings) < wanted and attempts < 30:
        attempts += 1
        kind = FOCAL_KINDS[rng.integers(len(FOCAL_KINDS))]
        organs = sorted({o for k, o in focal if k == kind})
        candidate = draw_finding(rng, kind, organs[rng.integers(len(organs))])
        if compatible(candidate, findings):
            findings.append(candidate)
    return PhantomCase(case_id=case_id or f"{seed:06d}", seed=int(seed), region=region, phase=phase,
                       plane=plane, findings=findings, scale=scale)


def render_dense(case: PhantomCase, size=(32, 128, 128), window="soft tissue"):
    """(image uint8, kind map, organ map) for one case, through the one preprocessing path."""
    import torch
    import torch.nn.functional as F

    from napari_med3dvlm.io import preprocess_volume
    from napari_med3dvlm.phantoms.generator import render_case

    rendered = render_case(case)
    tensor, transform = preprocess_volume(rendered.stack, "CT", window=window, spatial_size=tuple(size))
    image = np.rint(tensor[0, 0].numpy() * 255.0).astype(np.uint8)
    kind_of_finding = np.zeros(len(case.findings) + 1, dtype=np.uint8)
    for i, f in enumerate(case.findings):
        kind_of_finding[i + 1] = KINDS.index(f.kind) + 1
    (z0, y0, x0), (z1, y1, x1) = transform.crop_start, transform.crop_stop
    small = tuple(s // LABEL_STRIDE for s in size)
    maps = []
    for labels in (kind_of_finding[rendered.finding_labels], rendered.organ_labels):
        crop = torch.from_numpy(np.ascontiguousarray(labels[z0:z1, y0:y1, x0:x1]))[None, None].float()
        maps.append(F.interpolate(crop, size=small, mode="nearest-exact")[0, 0].numpy().astype(np.uint8))
    return image, maps[0], maps[1]


@dataclass(frozen=True)
class DenseSpec:
    seed: int
    split: str
    count: int
    size: tuple[int, int, int] = (32, 128, 128)
    window: str = "soft tissue"
    sampler: str = "natural"  # or "lesion-rich" (`sample_lesion_rich_case`; training splits only)

    def signature(self) -> dict:
        out = {"seed": self.seed, "split": self.split, "count": self.count, "size": list(self.size),
               "window": self.window, "labels": len(FINDING_LABELS)}
        if self.sampler != "natural":
            out["sampler"] = self.sampler
        return out


def _render_job(args):
    index, spec = args
    from napari_med3dvlm.phantoms.writers import case_seed

    sampler = {"natural": sample_case, "lesion-rich": sample_lesion_rich_case}[spec.sampler]
    case = sampler(case_seed(spec.seed, spec.split, index), case_id=f"{spec.split}_{index:05d}")
    image, kind, organ = render_dense(case, spec.size, spec.window)
    return index, image, kind, organ, case_labels(case), case.to_dict()


def _init_worker():
    import torch

    torch.set_num_threads(1)


class DenseCache:
    """Memory-mapped dense targets for ``spec.count`` cases; built once, resumable chunk by chunk."""

    CHUNK = 256

    def __init__(self, folder: Path, spec: DenseSpec):
        self.folder = Path(folder)
        self.spec = spec
        d, h, w = spec.size
        s = LABEL_STRIDE
        self.shapes = {
            "image": (spec.count, d, h, w),
            "kind": (spec.count, d // s, h // s, w // s),
            "organ": (spec.count, d // s, h // s, w // s),
            "labels": (spec.count, len(FINDING_LABELS)),
        }

    def _array(self, name: str, mode: str):
        return np.lib.format.open_memmap(self.folder / f"{name}.npy", mode=mode, dtype=np.uint8,
                                         shape=self.shapes[name] if mode == "w+" else None)

    @property
    def complete(self) -> bool:
        meta = self.folder / "meta.json"
        return meta.exists() and json.loads(meta.read_text()).get("signature") == self.spec.signature()

    def build(self, workers: int = 2, progress=print) -> "DenseCache":
        if self.complete:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        state = self.folder / "chunks.json"
        signature = self.spec.signature()
        done: list[int] = []
        if state.exists():
            saved = json.loads(state.read_text())
            if saved.get("signature") == signature:
                done = saved["done"]
        arrays = {name: self._array(name, "r+" if done else "w+") for name in self.shapes}
        cases = [None] * self.spec.count
        if done and (self.folder / "cases.partial.json").exists():
            cases = json.loads((self.folder / "cases.partial.json").read_text())
        chunks = [c for c in range(0, self.spec.count, self.CHUNK) if c not in done]
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(max(1, workers), initializer=_init_worker) as pool:
            for start in chunks:
                jobs = [(i, self.spec) for i in range(start, min(start + self.CHUNK, self.spec.count))]
                for index, image, kind, organ, labels, case in pool.imap_unordered(_render_job, jobs, chunksize=4):
                    arrays["image"][index] = image
                    arrays["kind"][index] = kind
                    arrays["organ"][index] = organ
                    arrays["labels"][index] = labels
                    cases[index] = case
                for a in arrays.values():
                    a.flush()
                done.append(start)
                (self.folder / "cases.partial.json").write_text(json.dumps(cases))
                state.write_text(json.dumps({"signature": signature, "done": done}))
                if progress:
                    progress(f"[vision] dense targets: {min(start + self.CHUNK, self.spec.count)}/{self.spec.count} "
                             f"{self.spec.split} cases")
        (self.folder / "cases.json").write_text(json.dumps(cases))
        (self.folder / "meta.json").write_text(json.dumps({"signature": signature}))
        return self

    def open(self) -> dict[str, np.ndarray]:
        return {name: np.load(self.folder / f"{name}.npy", mmap_mode="r") for name in self.shapes}

    def cases(self) -> list[dict]:
        return json.loads((self.folder / "cases.json").read_text())


#: Label-map voxels (half resolution) that make a cell fully positive for a kind: about the smallest
#: lesion the generator draws (2 cm at this scale), so a small lesion is a positive at any cell size.
SMALLEST_LESION_VOXELS = 8


def cell_targets(kind: np.ndarray, organ: np.ndarray, cell: int) -> tuple[np.ndarray, np.ndarray]:
    """Targets on a grid of ``cell``-voxel cubes of the label maps: (NUM_KINDS, d, h, w) presence in
    [0, 1] and the organ at each cell's centre (d, h, w).

    A cell holds a kind in proportion to the voxels of it that it contains, saturating at a quarter of
    the cell or at `SMALLEST_LESION_VOXELS`, whichever is fewer: borders are soft and a small lesion is
    a full positive in its cell (saturating at a quarter alone left a 2 cm calcification at 0.1-0.5)."""
    d, h, w = (n // cell for n in kind.shape)
    presence = np.zeros((NUM_KINDS, d, h, w), dtype=np.float32)
    blocks = kind[: d * cell, : h * cell, : w * cell]
    full = min(cell ** 3 / 4.0, SMALLEST_LESION_VOXELS)
    for k in np.unique(blocks):
        if k:
            count = (blocks == k).reshape(d, cell, h, cell, w, cell).sum(axis=(1, 3, 5))
            presence[k - 1] = np.minimum(1.0, count / full)
    centre = cell // 2
    return presence, np.ascontiguousarray(organ[centre::cell, centre::cell, centre::cell][:d, :h, :w])


def case_kinds(labels: np.ndarray) -> np.ndarray:
    """(NUM_KINDS,) 1 where the case holds a finding of that kind, from its (kind, site) label vector:
    the case-level truth, whether or not the lesion survives the label maps' resolution."""
    out = np.zeros(NUM_KINDS, dtype=np.float32)
    out[LABEL_KIND[np.asarray(labels) > 0]] = 1.0
    return out


class DenseDataset:
    """Items for the vision stage: the model input (1, D, H, W) float and its targets, with the dense
    ones on the grid of ``cell``-voxel cubes of the label maps (4 = DCFormer's stride-8 stage s1)."""

    def __init__(self, arrays: dict[str, np.ndarray], cell: int = 8 // LABEL_STRIDE):
        self.arrays = arrays
        self.cell = cell

    def __len__(self) -> int:
        return len(self.arrays["labels"])

    def __getitem__(self, index: int) -> dict:
        import torch

        a = self.arrays
        presence, organ = cell_targets(np.asarray(a["kind"][index]), np.asarray(a["organ"][index]), self.cell)
        return {
            "images": torch.from_numpy(np.asarray(a["image"][index], dtype=np.float32) / 255.0)[None],
            "kind": torch.from_numpy(presence),
            "organ": torch.from_numpy(organ.astype(np.int64)),
            "labels": torch.from_numpy(np.asarray(a["labels"][index], dtype=np.float32)),
            "case_kinds": torch.from_numpy(case_kinds(a["labels"][index])),
            **({"technique": torch.from_numpy(np.asarray(a["technique"][index]))} if "technique" in a else {}),
        }


def collate_dense(items: list[dict]) -> dict:
    import torch

    return {key: torch.stack([item[key] for item in items]) for key in items[0]}
