"""The scope check of the embedded demo model on what a user would open: phantoms from a seed no
training run used (in scope), and every real CT and MR volume installed on this machine (all flagged).

Volumes go through the CLI's path: a file -> the plugin's reader -> engine input -> the check with the
features the engine produces. Run with ``-s`` to see which reason fired for each real volume.
"""

import importlib.util
import json
import sys
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_med3dvlm.inference import InferenceEngine, InferenceSettings
from napari_med3dvlm.inference.cli import load_volumes
from napari_med3dvlm.inference.scope import check_input
from napari_med3dvlm.model.scope import ScopeProfile
from napari_med3dvlm.model.loading import DEMO_FOLDER

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from io_assets import COLIN27, CRANIUM, CRANIUM_SHAPE, CRANIUM_SPACING  # noqa: E402

#: The demo model's data: phantom split seed 0 (docs/training.md), vision stage phantom_seed 0.
UNUSED_SEED = 7
TEST_CASES = 200
MRICRON_TEMPLATES = COLIN27.parent
PYDICOM_FILES = ("CT_small.dcm", "MR_small.dcm", "MR2_UNCR.dcm", "emri_small.dcm", "liver_1frame.dcm", "JPEG2000.dcm")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_engine():
    engine = InferenceEngine(InferenceSettings(model_source="embedded", device="cpu"))
    yield engine
    engine.unload()


def check_file(engine, path):
    return [check_input(engine, volume) for volume in load_volumes(path)]


def test_the_shipped_statistics_belong_to_the_shipped_weights():
    """Fails after the demo model is retrained until `python -m training.scope --preset demo` is rerun."""
    profile = ScopeProfile.load(DEMO_FOLDER)
    assert profile.modalities == ("CT",)
    assert set(profile.features) == {"vlm", "siglip"}, "scope.json is stale: recompute it (docs/training.md)"


def test_phantoms_of_an_unused_seed_are_in_scope(demo_engine, tmp_path):
    from napari_med3dvlm.phantoms.writers import WriteOptions, write_split

    write_split(tmp_path, {"test": TEST_CASES}, seed=UNUSED_SEED, options=WriteOptions(nifti=True), workers=1)
    entries = json.loads((tmp_path / "M3D_Cap.json").read_text())["test"]
    files = [tmp_path / e["image"].replace(".npy", ".nii.gz") for e in entries]  # the raw-HU volumes
    assert len(files) == TEST_CASES
    results = [r for path in files for r in check_file(demo_engine, path)]
    flagged = [r for r in results if r.flagged]
    share = len(flagged) / len(results)
    print(f"\nphantom test split, seed {UNUSED_SEED}: {len(flagged)}/{len(results)} flagged ({share:.1%})")
    for result in flagged:
        print("  ", result.warning())
    assert all("features:vlm" in r.checked for r in results)  # the model-based check ran on every one
    assert share <= 0.02


@pytest.fixture(scope="module")
def cranium_hu():
    with tarfile.open(CRANIUM, "r:gz") as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("matrix.dat"))
        raw = archive.extractfile(member).read()
    return np.frombuffer(raw, dtype="<i2").reshape(CRANIUM_SHAPE).copy()


def _save_ct(path, hu, spacing):
    """(z, y, x) HU with z inferior->superior as a NIfTI the reader recognises as CT."""
    sz, sy, sx = spacing
    affine = np.diag([-sx, -sy, sz, 1.0])  # x to the left, y to posterior: LPS display order in RAS
    image = nib.Nifti1Image(np.ascontiguousarray(hu.transpose(2, 1, 0)), affine)
    image.header["descrip"] = b"head CT"
    nib.save(image, str(path))
    return path


@pytest.fixture(scope="module")
def real_volumes(tmp_path_factory, cranium_hu):
    """Every real CT/MR file installed here, plus a rotated and a heavily cropped version of the CT."""
    from scipy import ndimage

    from napari_med3dvlm.io.dicom_write import write_dicom_series

    folder = tmp_path_factory.mktemp("real")
    files = {
        "invesalius head CT (NIfTI)": _save_ct(folder / "cranium.nii.gz", cranium_hu, CRANIUM_SPACING),
        "invesalius head CT, rotated 25 degrees": _save_ct(
            folder / "rotated.nii.gz",
            ndimage.rotate(cranium_hu, 25, axes=(1, 2), reshape=False, order=1, cval=-1024).astype(np.int16),
            CRANIUM_SPACING,
        ),
        "invesalius head CT, cropped to 40x96x96": _save_ct(
            folder / "cropped.nii.gz", cranium_hu[40:80, 80:176, 80:176], CRANIUM_SPACING
        ),
    }
    dicom = folder / "cranium_dicom"
    write_dicom_series(cranium_hu, dicom, spacing=CRANIUM_SPACING, first_position=(-122.5, -130.0, -80.0),
                       description="Head CT axial", intercept=-1024)
    files["invesalius head CT (DICOM series)"] = dicom
    for path in sorted(MRICRON_TEMPLATES.glob("*.nii.gz")):
        files[f"mricron {path.name}"] = path
    if importlib.util.find_spec("nilearn") is not None:
        from nilearn import datasets

        template = folder / "mni.nii.gz"
        datasets.load_mni152_template().to_filename(str(template))
        files["nilearn MNI152 template"] = template
    import pydicom.data

    for name in PYDICOM_FILES:
        files[f"pydicom {name}"] = Path(pydicom.data.get_testdata_file(name))
    nibabel_data = Path(nib.__file__).parent / "tests" / "data"
    for path in sorted(nibabel_data.glob("*.nii*")):
        files[f"nibabel {path.name}"] = path
    return files


def test_every_real_volume_is_flagged_for_the_demo_model(demo_engine, real_volumes):
    from napari_med3dvlm.io import VolumeReadError

    checked, unreadable = {}, []
    for label, path in real_volumes.items():
        try:
            checked[label] = check_file(demo_engine, path)
        except (VolumeReadError, ValueError) as err:  # 4-D series, CIFTI, RGB: the reader refuses them
            unreadable.append(f"{label}: {err}")
    print("\nreal volumes, demo model:")
    for label, results in checked.items():
        for result in results:
            distance = "-" if result.distance is None else f"{result.distance:.1f}x"
            print(f"  {label}: features {distance}; {', '.join(result.codes) or 'IN SCOPE'}")
    print("not readable as a 3-D volume (nothing to check):", *unreadable, sep="\n  ")
    assert {"invesalius head CT (NIfTI)", "mricron ch2.nii.gz", "nibabel anatomical.nii"} <= set(checked)
    # Single-slice files never reach the model: the model commands refuse them with a message naming the
    # file (stronger than the "2-D image" scope warning, which still covers thin stacks).
    for name in ("CT_small.dcm", "MR_small.dcm"):
        refusal = [line for line in unreadable if line.startswith(f"pydicom {name}:")]
        assert refusal and name in refusal[0].split(": ", 1)[1] and "3-D volume" in refusal[0], unreadable
    missed = [label for label, results in checked.items() for r in results if not r.flagged]
    assert not missed, f"not flagged: {missed}"
    # The real CT and its rotated and cropped versions are CT like the training data; the image
    # features alone tell them apart from the phantoms.
    for label in ("invesalius head CT (NIfTI)", "invesalius head CT, rotated 25 degrees",
                  "invesalius head CT, cropped to 40x96x96", "invesalius head CT (DICOM series)"):
        assert "features" in checked[label][0].codes, label
