"""Building and refreshing an index from a folder tree.

A run is a plan (which volumes are new, changed, unchanged or gone, decided from content hashes
alone) followed by embedding the new and changed ones in small batches, each committed atomically.
Killing a run loses at most the batch in flight; the next run's plan skips everything committed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from napari_med3dvlm.io import Volume, acquisition_view, model_input

from .embedder import Embedder
from .sources import VolumeSource, content_hash, scan_folder
from .store import VolumeIndex
from .thumbnail import middle_slice_png

log = logging.getLogger(__name__)

#: progress(done, total, message): called after each volume is embedded or skipped.
ProgressCallback = Callable[[int, int, str], None]


@dataclass
class IndexPlan:
    root_id: int
    pending: list[tuple[VolumeSource, str]]  # (source, content hash) to embed
    unchanged: int
    removed: list[str]  # keys of volumes no longer on disk


@dataclass
class IndexReport:
    root: Path
    total: int = 0
    unchanged: int = 0
    embedded: int = 0
    removed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (relative path, error)
    cancelled: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        text = (
            f"{self.total} volumes: {self.embedded} embedded, {self.unchanged} unchanged, "
            f"{self.removed} removed, {len(self.failed)} failed in {self.seconds:.1f} s"
        )
        return text + (" (cancelled)" if self.cancelled else "")


def load_source(source: VolumeSource) -> Volume:
    """Read one indexed volume through the plugin's readers (the same ones napari uses)."""
    from napari_med3dvlm.io import VolumeReadError, read_volume, read_volumes

    if source.kind == "nifti":
        return read_volume(source.path)
    try:
        return read_volume(source.path, series=source.series)
    except VolumeReadError:
        # A series the reader splits in parts (mixed sizes, localisers): index its largest part.
        parts = [v for v in read_volumes(source.path) if v.metadata.get("series_hash", "").startswith(source.series)]
        if not parts:
            raise
        return max(parts, key=lambda v: v.data.size)


def plan_index(index: VolumeIndex, root, model_id: str, sources: Sequence[VolumeSource] | None = None) -> IndexPlan:
    """Decide what to embed without touching any model or pixel data."""
    root = Path(root).expanduser().resolve()
    sources = scan_folder(root) if sources is None else sources
    root_id = index.root_id(root)
    stored = index.entries(root_id)
    pending, unchanged, seen = [], 0, set()
    for source in sources:
        key = f"{root_id}/{source.key}"
        seen.add(key)
        try:
            digest = content_hash(source.files)
        except OSError as err:  # vanished or unreadable between scan and hash
            log.warning("cannot hash %s: %s", source.key, err)
            continue
        row = stored.get(key)
        if row is not None and row["content_hash"] == digest and row["model_id"] == model_id:
            unchanged += 1
        else:
            pending.append((source, digest))
    removed = sorted(set(stored) - seen)
    return IndexPlan(root_id=root_id, pending=pending, unchanged=unchanged, removed=removed)


def _prepare(source: VolumeSource, digest: str, root_id: int, embedder: Embedder, loader):
    """Read, preprocess and describe one volume (runs in a worker thread, ahead of the encoder)."""
    volume = loader(source)
    image, _ = model_input(volume, embedder.spatial_size, embedder.window)
    stack, stack_spacing = acquisition_view(volume)  # the slice stack the model reads, for the preview
    row = {
        "key": f"{root_id}/{source.key}",
        "root_id": root_id,
        "path": source.relative_path,
        "series": source.series,
        "content_hash": digest,
        "description": volume.description or "",
        "modality": volume.modality or "",
        "shape": [int(s) for s in volume.shape],
        "spacing": [float(s) for s in volume.spacing],
        "thumbnail": middle_slice_png(stack, volume.modality, embedder.window, pixel_spacing=stack_spacing[1:]),
        "scope": _scope_reasons(volume, embedder),
    }
    return image, row


def _scope_reasons(volume: Volume, embedder: Embedder) -> list[str]:
    """The model-free scope checks of one volume (the embedding check follows in ``flush``)."""
    from napari_med3dvlm.model.scope import ScopeProfile, volume_reasons

    profile = getattr(embedder, "scope_profile", None) or ScopeProfile(source="defaults")
    return [r.message for r in volume_reasons(volume.data, volume.modality, volume.spacing, volume.plane, profile)]


def _finish_scope(rows: list[dict], vectors, embedder: Embedder) -> None:
    """Add the embedding-distance check and store the reasons one a line ("" = in scope)."""
    from napari_med3dvlm.model.scope import feature_reason

    profile = getattr(embedder, "scope_profile", None)
    for row, vector in zip(rows, vectors):
        reasons = list(row.get("scope") or [])
        if profile is not None:
            reason, _ = feature_reason(np.asarray(vector)[None], profile, "siglip")
            if reason is not None:
                reasons.append(reason.message)
        row["scope"] = "\n".join(reasons)


def embed_sources(
    index: VolumeIndex,
    pending: Sequence[tuple[VolumeSource, str]],
    root_id: int,
    embedder: Embedder,
    *,
    batch_size: int = 4,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    loader: Callable[[VolumeSource], Volume] = load_source,
    report: IndexReport | None = None,
    done_offset: int = 0,
    total: int | None = None,
    write: Callable[[list[dict]], None] | None = None,
) -> IndexReport:
    """Embed volumes in batches; each batch is one atomic upsert.

    Reading the next volume overlaps with encoding the current batch (a single reader thread:
    I/O and decompression release the GIL).
    """
    report = report or IndexReport(root=Path("."))
    write = write or index.upsert
    total = len(pending) if total is None else total
    done = done_offset
    images, rows = [], []

    def flush():
        if not rows:
            return
        vectors = embedder.embed_volumes(torch.cat(images))
        _finish_scope(rows, vectors, embedder)
        for row, vector in zip(rows, vectors):
            row["model_id"] = embedder.model_id
            row["vector"] = np.asarray(vector, dtype=np.float32)
        write(list(rows))
        report.embedded += len(rows)
        images.clear()
        rows.clear()

    with ThreadPoolExecutor(max_workers=1) as reader:
        futures = [reader.submit(_prepare, s, d, root_id, embedder, loader) for s, d in pending[:2]]
        for position, (source, _digest) in enumerate(pending):
            if cancel is not None and cancel.is_set():
                report.cancelled = True
                for future in futures:
                    future.cancel()
                break
            future = futures.pop(0)
            next_position = position + len(futures) + 1
            if next_position < len(pending):
                futures.append(reader.submit(_prepare, *pending[next_position], root_id, embedder, loader))
            try:
                image, row = future.result()
            except Exception as err:  # one unreadable volume must not stop a collection
                log.warning("skipping %s: %s", source.relative_path, err)
                report.failed.append((source.relative_path, str(err)))
            else:
                images.append(image)
                rows.append(row)
                if len(rows) >= batch_size:
                    flush()
            done += 1
            if progress is not None:
                progress(done, total, source.relative_path)
        if not report.cancelled:
            flush()
        else:
            rows.clear()  # a cancelled run commits nothing half-done; finished batches are kept
    return report


def index_folder(
    index: VolumeIndex | str | os.PathLike,
    root: str | os.PathLike,
    embedder: Embedder,
    *,
    batch_size: int = 4,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    loader: Callable[[VolumeSource], Volume] = load_source,
) -> IndexReport:
    """Add or refresh every volume under ``root``: unchanged ones cost a hash, no encoder work."""
    start = time.perf_counter()
    index = index if isinstance(index, VolumeIndex) else VolumeIndex(index)
    root = Path(root).expanduser().resolve()
    sources = scan_folder(root)
    if not _model_matches(index, embedder):
        dim = _embedding_dim(embedder)
        index.set_model(embedder.model_id, dim)
    index.deduplicate()  # a no-op for indexes written here (upserts); guards against foreign writers
    plan = plan_index(index, root, embedder.model_id, sources)
    report = IndexReport(root=root, total=len(sources), unchanged=plan.unchanged)
    report.removed = index.delete_keys(plan.removed)
    if progress is not None:
        progress(plan.unchanged, len(sources), "unchanged volumes skipped")
    embed_sources(
        index, plan.pending, plan.root_id, embedder,
        batch_size=batch_size, progress=progress, cancel=cancel, loader=loader,
        report=report, done_offset=plan.unchanged, total=len(sources),
    )
    if not report.cancelled:
        index.maintain()
    report.seconds = time.perf_counter() - start
    return report


def refresh_index(
    index: VolumeIndex | str | os.PathLike,
    embedder: Embedder,
    *,
    batch_size: int = 4,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> list[IndexReport]:
    """Refresh every folder already in the index (roots that no longer exist are left alone)."""
    index = index if isinstance(index, VolumeIndex) else VolumeIndex(index)
    reports = []
    for root in index.roots.values():
        if cancel is not None and cancel.is_set():
            break
        if not root.is_dir():
            log.warning("indexed folder %s is missing; its entries are kept", root.name)
            continue
        reports.append(index_folder(index, root, embedder, batch_size=batch_size, progress=progress, cancel=cancel))
    return reports


def _model_matches(index: VolumeIndex, embedder: Embedder) -> bool:
    return index.model_id == embedder.model_id and index.dim is not None


def _embedder_device(embedder: Embedder) -> torch.device:
    """Where ``embedder`` runs: its own device when it has one, else what ``auto`` gives."""
    from napari_med3dvlm.model.device import get_device

    return get_device(getattr(embedder, "device", None))


def _embedding_dim(embedder: Embedder) -> int:
    """The embedding width, from the embedder if it says, else from one short text."""
    dim = getattr(embedder, "dim", None)
    if dim:
        return int(dim)
    return int(embedder.embed_texts(["x"]).shape[1])


def index_folder_distributed(
    index: VolumeIndex | str | os.PathLike,
    root: str | os.PathLike,
    embedder: Embedder,
    *,
    batch_size: int = 4,
    progress: ProgressCallback | None = None,
    loader: Callable[[VolumeSource], Volume] = load_source,
) -> IndexReport | None:
    """``index_folder`` across the processes of ``accelerate launch`` (or torchrun).

    Every process embeds its slice of the plan and commits batches to its own shard table, so
    writers never contend; the main process merges the shards at the end (and, after a crash, at
    the start of the next run). Returns the report on the main process, None elsewhere.
    """
    from accelerate import PartialState

    # The process group follows where the embedder runs, as the one device policy (`model.device`)
    # resolves it: NCCL for CUDA, else gloo (accelerate's cpu=True), as on a CPU-only machine.
    state = PartialState(cpu=_embedder_device(embedder).type != "cuda")
    start = time.perf_counter()
    db = index.path if isinstance(index, VolumeIndex) else Path(index)
    root = Path(root).expanduser().resolve()
    if state.is_main_process:
        main = VolumeIndex(db)
        if not _model_matches(main, embedder):
            main.set_model(embedder.model_id, _embedding_dim(embedder))
        main.root_id(root)
        main.merge_shards()
        main.deduplicate()
    state.wait_for_everyone()

    index = VolumeIndex(db)  # re-read what the main process wrote
    sources = scan_folder(root)
    plan = plan_index(index, root, embedder.model_id, sources)
    shard = f"shard_{state.process_index:03d}"
    report = IndexReport(root=root, total=len(sources), unchanged=plan.unchanged)
    with state.split_between_processes(plan.pending) as mine:
        embed_sources(
            index, mine, plan.root_id, embedder, batch_size=batch_size, progress=progress, loader=loader,
            report=report, write=lambda rows: index.upsert(rows, table_name=shard),
        )
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    report.removed = index.delete_keys(plan.removed)
    index.merge_shards()
    index.maintain()
    report.embedded = len(plan.pending) - len(report.failed)  # all processes together
    report.seconds = time.perf_counter() - start
    return report
