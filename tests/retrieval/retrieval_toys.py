"""Small stand-ins for retrieval tests: an embedder that counts its work, and a tiny collection.

The toy embedder is a fixed function of the preprocessed volume (a coarse 4x4x4 intensity grid), so
a volume and a copy of it embed to the same vector, and different phantoms embed apart.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

GRID = 4


class CountingEmbedder:
    """Embeds volumes as their centred coarse intensity grid; counts every volume it encodes."""

    def __init__(self, model_id: str = "toy-grid-v1", delay: float = 0.0):
        self.model_id = model_id
        self.spatial_size = (16, 32, 32)
        self.window = None
        self.dim = GRID**3
        self.delay = delay
        self.volumes_embedded = 0
        self.texts_embedded = 0
        self._lock = threading.Lock()

    def embed_volumes(self, images: torch.Tensor) -> np.ndarray:
        with self._lock:
            self.volumes_embedded += images.shape[0]
        if self.delay:
            time.sleep(self.delay * images.shape[0])
        grid = F.adaptive_avg_pool3d(images.float(), GRID).flatten(1).numpy()
        return _unit(grid - grid.mean(axis=1, keepdims=True))

    def embed_texts(self, texts) -> np.ndarray:
        with self._lock:
            self.texts_embedded += len(texts)
        vectors = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
            vectors.append(np.random.default_rng(seed).standard_normal(self.dim))
        return _unit(np.asarray(vectors, dtype=np.float32))


def _unit(array: np.ndarray) -> np.ndarray:
    return (array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def phantom(seed: int, shape=(12, 24, 24)) -> np.ndarray:
    """A CT-like volume in HU: air outside, a soft-tissue body and one bright blob at a random place."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    data = np.full(shape, -1000.0, dtype=np.float32)
    data[(y**2 + x**2) < 0.8] = 40.0
    centre = rng.uniform(-0.5, 0.5, size=3)
    radius = rng.uniform(0.2, 0.4)
    data[((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) < radius**2] = 300.0
    data += rng.normal(0, 5, size=shape).astype(np.float32)
    return data.astype(np.int16)


def write_nifti(path: Path, data_zyx: np.ndarray, spacing=(2.0, 1.0, 1.0)) -> Path:
    """Write a (z, y, x) array as NIfTI (stored x, y, z with an RAS affine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    image = nib.Nifti1Image(np.ascontiguousarray(data_zyx.transpose(2, 1, 0)), affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))
    return path


def make_collection(root: Path, count: int, start_seed: int = 0) -> list[Path]:
    """``count`` phantom CTs in two sub-folders of ``root``."""
    paths = []
    for i in range(count):
        folder = root / ("chest" if i % 2 else "abdomen")
        paths.append(write_nifti(folder / f"case_{start_seed + i:03d}.nii.gz", phantom(start_seed + i)))
    return paths


def write_dicom_series(folder: Path, data_zyx: np.ndarray, description: str = "toy CT series") -> list[Path]:
    """A minimal valid CT series (one file per slice) with an anonymous header."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid = generate_uid(), generate_uid()
    files = []
    for index, plane in enumerate(data_zyx):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality, ds.SeriesDescription, ds.InstanceNumber = "CT", description, index + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(index) * 2.0]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 2.0
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0.0, 1.0
        ds.PixelData = np.ascontiguousarray(plane.astype(np.int16)).tobytes()
        path = folder / f"slice_{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def indexing_child(delay: float) -> str:
    """Source of a child process that indexes argv[2] into the index at argv[1] with a slow
    `CountingEmbedder` (argv[3]: this folder, for the import), for tests that kill it midway."""
    return (
        "import sys\n"
        "sys.path.insert(0, sys.argv[3])\n"
        "from retrieval_toys import CountingEmbedder\n"
        "from napari_med3dvlm.retrieval import index_folder\n"
        f"index_folder(sys.argv[1], sys.argv[2], CountingEmbedder(delay={delay}), batch_size=2)\n"
    )


def index_rows(db) -> int:
    """Rows committed to the index so far (0 before its table exists)."""
    from napari_med3dvlm.retrieval import VolumeIndex

    try:
        return len(VolumeIndex(db))
    except Exception:  # noqa: BLE001 - the table may not exist yet
        return 0
