import sys
from pathlib import Path

import pytest

# The shared stand-ins live next to the tests (importlib import mode adds no test folder to sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval_toys import CountingEmbedder, make_collection  # noqa: E402


@pytest.fixture
def embedder():
    return CountingEmbedder()


@pytest.fixture
def collection(tmp_path):
    root = tmp_path / "collection"
    make_collection(root, 6)
    return root
