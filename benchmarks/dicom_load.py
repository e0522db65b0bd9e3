"""DICOM series loading: our reader against SimpleITK (GDCM) and a plain pydicom loop.

Writes a 300-slice 512x512 CT series into a temporary folder, then loads it with each reader a few
times, the readers interleaved round by round (files already in the page cache, so drift of a shared
machine hits every reader alike), and prints each reader's median seconds, its median ratio to
SimpleITK and the spread (lowest and highest) of the per-round ratios.

    python benchmarks/dicom_load.py [--slices 300] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

from napari_med3dvlm.io import read_volume
from napari_med3dvlm.io.dicom_write import write_dicom_series


def phantom(slices: int, size: int = 512) -> np.ndarray:
    """A water cylinder with a bone ring in air, in HU."""
    y, x = np.mgrid[:size, :size] - size / 2
    radius = np.hypot(y, x)
    plane = np.where(radius < size * 0.4, 0, -1000).astype(np.int16)
    plane[(radius > size * 0.36) & (radius < size * 0.4)] = 900
    volume = np.repeat(plane[None], slices, axis=0)
    volume += (np.arange(slices, dtype=np.int16) % 50)[:, None, None]
    return volume


def load_ours(folder: Path) -> np.ndarray:
    return np.asarray(read_volume(folder).data)


def load_simpleitk(folder: Path) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def load_naive_pydicom(folder: Path) -> np.ndarray:
    """What a script would do: read every file, sort by z, stack and rescale."""
    datasets = [pydicom.dcmread(path) for path in folder.iterdir()]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    return np.stack(
        [ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets]
    )


def timed(function, folder: Path) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = function(folder)
    return time.perf_counter() - start, result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "series"
        truth = phantom(args.slices)
        start = time.perf_counter()
        write_dicom_series(truth, folder, spacing=(1.25, 0.7, 0.7), shuffle=True)
        print(f"wrote {args.slices} slices of 512x512 in {time.perf_counter() - start:.1f} s")

        readers = (
            ("SimpleITK ImageSeriesReader", load_simpleitk),
            ("napari-med3dvlm read_volume", load_ours),
            ("naive pydicom loop", load_naive_pydicom),
        )
        times = np.zeros((args.repeats, len(readers)))
        for round_ in range(args.repeats):
            for j, (name, function) in enumerate(readers):
                times[round_, j], array = timed(function, folder)
                assert np.array_equal(np.asarray(array, dtype=np.float64), truth), f"{name} read wrong values"

    ratios = times / times[:, :1]
    print(f"{'reader':32s} {'median s':>8s} {'x SimpleITK':>12s} {'spread':>12s}  ({args.repeats} interleaved rounds)")
    for j, (name, _) in enumerate(readers):
        print(f"{name:32s} {np.median(times[:, j]):8.3f} {np.median(ratios[:, j]):12.2f} "
              f"{ratios[:, j].min():5.2f}-{ratios[:, j].max():.2f}")


if __name__ == "__main__":
    main()
