import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: shared test helpers

from mpyrun import FIXTURES  # noqa: E402


@pytest.fixture
def fixdir(tmp_path):
    """A working directory holding a copy of every fixture (the board's filesystem)."""
    for p in FIXTURES.iterdir():
        shutil.copy(p, tmp_path / p.name)
    return tmp_path
