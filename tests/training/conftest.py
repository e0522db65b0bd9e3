"""Fixtures of the training tests (helpers live in tiny_setup.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the tests import tiny_setup

from tiny_setup import write_tiny_m3d  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_tiny_m3d(tmp_path_factory.mktemp("m3d"))
