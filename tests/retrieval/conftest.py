import pytest
from retrieval_toys import CountingEmbedder, make_collection


@pytest.fixture
def embedder():
    return CountingEmbedder()


@pytest.fixture
def collection(tmp_path):
    root = tmp_path / "collection"
    make_collection(root, 6)
    return root
