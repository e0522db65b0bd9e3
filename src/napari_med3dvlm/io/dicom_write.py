"""Write a plain single-frame DICOM series from an array.

Used to turn phantoms and test volumes into series that behave like scanner output (positions
along the slice normal, rescale slope/intercept, window tags). Writes no identifiers beyond what
the caller passes.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

_SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage}


def write_dicom_series(
    stored: np.ndarray,
    folder,
    *,
    spacing=(1.0, 1.0, 1.0),
    first_position=(0.0, 0.0, 0.0),
    orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    modality: str = "CT",
    description: str = "",
    slope: float = 1.0,
    intercept: float = -1024.0,
    window: tuple[float, float] | None = None,
    shuffle: bool = False,
    seed: int = 0,
    extra: dict | None = None,
) -> list[Path]:
    """Write `stored` (slices, rows, cols) of real-world values as one series.

    spacing is (slice step, row spacing, column spacing) in mm; slice k sits at
    first_position + k * step * normal, normal = row cosine x column cosine (LPS mm). Values are
    stored as (value - intercept) / slope. `shuffle` scrambles file names against slice order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    values = np.asarray(stored, dtype=np.float64)
    raw = np.round((values - intercept) / slope)
    signed = raw.min() < 0
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    if raw.min() < info.min or raw.max() > info.max:
        raise ValueError("values do not fit 16-bit storage with this slope/intercept")
    raw = raw.astype(dtype)
    orientation = np.asarray(orientation, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    step, row_spacing, col_spacing = (float(s) for s in spacing)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    order = list(range(raw.shape[0]))
    if shuffle:
        random.Random(seed).shuffle(order)
    paths = []
    for file_number, index in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = _SOP_CLASS.get(modality, CTImageStorage)
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = frame_of_reference
        ds.Modality = modality
        ds.SeriesDescription = description
        ds.SeriesNumber = 1
        ds.InstanceNumber = index + 1
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        position = np.asarray(first_position, dtype=float) + index * step * normal
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.PixelSpacing = [f"{row_spacing:.6f}", f"{col_spacing:.6f}"]
        ds.SliceThickness = f"{step:.4f}"
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(raw.shape[1]), int(raw.shape[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = int(signed)
        ds.PixelData = np.ascontiguousarray(raw[index]).tobytes()
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        path = folder / f"IM{file_number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
