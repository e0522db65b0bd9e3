"""The retrieval experiments run end to end on a small phantom split with the shipped demo model, so
the numbers quoted in docs/retrieval.md come from scripts that still work."""

import importlib.util
import sys
from pathlib import Path

import pytest

from napari_med3dvlm.phantoms.writers import WriteOptions, write_split

# slow: renders phantoms and tunes probes on every stage
pytestmark = pytest.mark.slow

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # the probe's render workers pickle functions by module name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    write_split(root, {"train": 10, "test": 4}, seed=0, options=WriteOptions(nifti=False), workers=1)
    return root


def test_vision_probe_reads_every_stage_and_tunes_on_extra_rendered_cases(phantoms, capsys):
    probe = _script("retrieval_vision_probe")
    assert probe.main(["--data", str(phantoms)]) == 0
    out = capsys.readouterr().out
    assert all(f"stage s{s}: linear probe" in out for s in (2, 3, 4))

    assert probe.main(["--data", str(phantoms), "--tune-from", "4", "--steps", "2", "--extra-train", "2"]) == 0
    out = capsys.readouterr().out
    assert "maps of 12 training cases" in out  # 10 on disk + 2 rendered in memory
    assert "step     2" in out and "of test cases" in out


def test_text_side_tuning_against_the_shipped_image_tower(phantoms, capsys):
    ceiling = _script("retrieval_text_ceiling")
    args = ["--data", str(phantoms), "--preset", "demo", "--image-side", "embedded", "--text-trainable", "lora",
            "--steps", "2"]
    assert ceiling.main(args) == 0
    out = capsys.readouterr().out
    assert "before tuning the text side: R@1" in out
    assert "text -> case R@1  with the shipped image tower" in out
