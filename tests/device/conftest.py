import shutil

import pytest

from mpyrun import FIXTURES


@pytest.fixture
def fixdir(tmp_path):
    """A working directory holding a copy of every fixture (the board's filesystem)."""
    for p in FIXTURES.iterdir():
        shutil.copy(p, tmp_path / p.name)
    return tmp_path
