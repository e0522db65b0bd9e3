"""Volumes held by the server: an LRU bounded in bytes, and the one way an upload becomes a `Volume`.

An upload is written to a private working folder under its content id (never a client-chosen name)
and read by the same hardened readers as a local file: NIfTI with its decompression bounds, a DICOM
series from a zip with the archive limits of `io`. The file is removed once read.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections import OrderedDict
from pathlib import Path

import numpy as np

from napari_med3dvlm.inference import wire
from napari_med3dvlm.io import Volume, VolumeReadError


class VolumeStore:
    """Volumes by id, least recently used dropped first once their bytes pass ``max_bytes``
    (a client that asks for a dropped volume gets 404 ``unknown_volume`` and uploads it again)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, Volume] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0

    def get(self, volume_id: str) -> Volume | None:
        with self._lock:
            volume = self._items.get(volume_id)
            if volume is not None:
                self._items.move_to_end(volume_id)
            return volume

    def put(self, volume_id: str, volume: Volume) -> None:
        size = int(np.asarray(volume.data).nbytes)
        with self._lock:
            if volume_id in self._items:
                self._items.move_to_end(volume_id)
                return
            self._items[volume_id] = volume
            self.nbytes += size
            while self.nbytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self.nbytes -= int(np.asarray(old.data).nbytes)

    def __contains__(self, volume_id: str) -> bool:
        with self._lock:
            return volume_id in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def read_upload(body: bytes, content_type: str, facts: dict, series: int, workdir: Path) -> Volume:
    """The uploaded bytes as a `Volume`, with the client's modality, plane and window for NIfTI
    (a DICOM series brings its own modality and plane; the window still comes from the request)."""
    from napari_med3dvlm.io import read_volume
    from napari_med3dvlm.io.nifti import read_nifti

    workdir.mkdir(parents=True, exist_ok=True)
    is_zip = content_type == wire.DICOM_ZIP or body[:4] == b"PK\x03\x04"
    suffix = ".zip" if is_zip else ".nii.gz" if body[:2] == b"\x1f\x8b" else ".nii"
    path = workdir / f"upload-{uuid.uuid4().hex}{suffix}"
    with open(path, "wb") as handle:
        handle.write(body)
    try:
        if is_zip:
            volume = read_volume(path, series)  # the readers' one rule; only that series is decoded
        else:
            volume = read_nifti(path)
            volume.modality, volume.plane = facts["modality"], facts["plane"]
    finally:
        os.unlink(path)
    volume.window = facts["window"]
    volume.description = ""  # the temporary file's name means nothing to anyone
    volume.metadata.pop("source_hash", None)
    if min(volume.shape) < 2:
        raise VolumeReadError(f"the volume has shape {volume.shape}: a single slice cannot be described")
    return volume
