"""The layer rules of docs/architecture.md hold (`lint-imports`, contracts in pyproject.toml), a
deliberately wrong import breaks them (the check can fail, so its passing means something), and
every module of the plugin and of `training` is under a contract by its package, so a module added
tomorrow is checked too.

import-linter is part of the testing extra (scripts/setup.sh installs it): without it these tests
fail, they do not skip."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = {"napari_med3dvlm": ROOT / "src" / "napari_med3dvlm", "training": ROOT / "training"}


def lint_imports(root: Path, pythonpath: list[Path]) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.exists():
        pytest.fail("import-linter is not installed: install the testing extra (pip install -e '.[testing]', "
                    "as scripts/setup.sh does)")
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
        # modules that do not exist yet: a new training module outside its evaluation may not run
        # the inference code, and a new top-level module of the plugin must be given a layer
        ("training/brand_new.py", "import napari_med3dvlm.inference.engine", "only its evaluation runs"),
        ("training/stages/brand_new.py", "from napari_med3dvlm.retrieval import search", "only its evaluation runs"),
        ("src/napari_med3dvlm/brand_new.py", "import napari_med3dvlm.io", "Layers"),
    ],
)
def test_a_wrong_import_breaks_a_contract(tmp_path, module, line, broken):
    root = _copy_of_the_code(tmp_path)
    path = root / module
    before = path.read_text(encoding="utf-8") if path.exists() else ""
    path.write_text(before + f"\n{line}  # deliberately wrong\n", encoding="utf-8")
    result = lint_imports(root, [root / "src", root])
    assert result.returncode != 0, result.stdout
    broken_section = result.stdout.split("Broken contracts", 1)[-1]
    assert broken in broken_section, result.stdout


# -- every module is under a contract, by its package --------------------------------------------


def _modules(package: str) -> list[str]:
    """Every module of ``package``, from its files (a module added tomorrow is in this list)."""
    folder = PACKAGES[package]
    names = []
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(folder).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join((package, *parts)))
    return names


def _contracts() -> list[dict]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["importlinter"]["contracts"]


def _matches(module: str, expression: str) -> bool:
    """``module`` is ``expression`` or inside it (import-linter's * and ** wildcards allowed)."""
    pattern = re.escape(expression).replace(r"\*\*", r"[^.]+(\.[^.]+)*").replace(r"\*", r"[^.]+")
    return re.fullmatch(pattern + r"(\..+)?", module) is not None


def _layer_names(layer: str) -> list[str]:
    return [name.strip().strip("()") for name in re.split(r"[|:]", layer) if name.strip()]


def _covers(contract: dict, module: str) -> bool:
    """Whether ``contract`` constrains what ``module`` may import (a layer it sits in, or a source of
    a forbidden contract); the private-module and cycle contracts apply to every module anyway."""
    if contract["type"] == "layers":
        return any(_matches(module, f"{container}.{name}") for container in contract["containers"]
                   for layer in contract["layers"] for name in _layer_names(layer))
    if contract["type"] == "forbidden":
        return any(_matches(module, source) for source in contract["source_modules"])
    return False


def test_the_module_lists_see_every_package():
    modules = _modules("napari_med3dvlm") + _modules("training")
    assert {"napari_med3dvlm.io.volume", "napari_med3dvlm.server.app", "training.loop",
            "training.stages.eval", "training.evaluation.pointing"} <= set(modules)
    assert _covers({"type": "forbidden", "source_modules": ["training.*"]}, "training.stages.eval")
    assert not _covers({"type": "forbidden", "source_modules": ["training.stages"]}, "training.stagesx")


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_module_is_under_a_contract_that_says_what_it_may_import(package):
    uncovered = [m for m in _modules(package) if not any(_covers(c, m) for c in _contracts())]
    assert uncovered == []


def test_every_module_of_the_plugin_has_a_layer():
    """The layers contract is exhaustive over the plugin's top level; every module below sits in one
    of its layers (the package's own __init__ is the container)."""
    (layers,) = [c for c in _contracts() if c["type"] == "layers" and c.get("containers") == ["napari_med3dvlm"]]
    assert layers.get("exhaustive") is True
    outside = [m for m in _modules("napari_med3dvlm") if m != "napari_med3dvlm" and not _covers(layers, m)]
    assert outside == []


def test_the_training_contracts_name_the_package_not_its_modules():
    """A contract about training constrains all of training: none picks modules one by one."""
    modules = _modules("training")
    about_training = [c for c in _contracts() if any(_covers(c, m) for m in modules)]
    assert len(about_training) >= 2
    for contract in about_training:
        assert [m for m in modules if not _covers(contract, m)] == [], contract["name"]
