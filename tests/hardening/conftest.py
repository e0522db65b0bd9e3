"""The hostile corpus, written once per session into a temporary folder (never kept in git)."""

import sys
from pathlib import Path

import pytest

# The corpus module lives next to the tests (importlib import mode adds no test folder to sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import build_corpus  # noqa: E402


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """{case id: path to open} for every case of `corpus.CASES`."""
    return build_corpus(tmp_path_factory.mktemp("corpus"))
