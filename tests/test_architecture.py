"""The layer rules of docs/architecture.md hold (`lint-imports`, contracts in pyproject.toml), and a
deliberately wrong import breaks them: the check can fail, so its passing means something."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed (testing extra)")


def lint_imports(root: Path, pythonpath: list[Path]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in pythonpath)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )


def test_the_import_contracts_are_kept():
    result = lint_imports(ROOT, [ROOT / "src", ROOT])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _copy_of_the_code(tmp_path: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "assets", "*.safetensors", "*.json")
    shutil.copytree(ROOT / "src" / "napari_med3dvlm", tmp_path / "src" / "napari_med3dvlm", ignore=ignore)
    shutil.copytree(ROOT / "training", tmp_path / "training", ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # io is the bottom layer: it may not reach up to the model
        ("src/napari_med3dvlm/io/volume.py", "import napari_med3dvlm.model.dcformer", "io imports nothing of ours"),
        # retrieval and inference are independent of each other
        ("src/napari_med3dvlm/retrieval/search.py", "from napari_med3dvlm.inference import engine", "Layers"),
        # training never imports the docks
        ("training/loop.py", "import napari_med3dvlm.widgets.chat", "Training never imports the docks"),
    ],
)
def test_a_wrong_import_breaks_a_contract(tmp_path, module, line, broken):
    root = _copy_of_the_code(tmp_path)
    path = root / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}  # deliberately wrong\n", encoding="utf-8")
    result = lint_imports(root, [root / "src", root])
    assert result.returncode != 0, result.stdout
    broken_section = result.stdout.split("Broken contracts", 1)[-1]
    assert broken in broken_section, result.stdout
