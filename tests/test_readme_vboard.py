"""README says where the default virtual board lives (one per user) and how to run a second
one (issue 12, item 11), and the run dir the code picks is the one it names."""
import re
from pathlib import Path

from skip2lora.board.virtual import default_run_dir

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _paragraph():
    """README's paragraph about the virtual board's home, whitespace joined."""
    text = " ".join(README.split())
    m = re.search(r"The virtual board is one per user: (.*?)on every command meant for it\.", text)
    assert m, "README no longer says where the virtual board lives"
    return m.group(0)


def test_readme_names_the_per_user_board_and_the_second_one():
    text = _paragraph()
    assert "`~/.cache/skip2lora/vboard`" in text and "`$XDG_CACHE_HOME/skip2lora/vboard`" in text
    assert "`SKIP2LORA_RUN_DIR=~/board2 skip2lora board start`" in text
    assert "`flash.img`" in text and "outlives `board stop`" in text


def test_the_run_dirs_readme_names_are_the_codes(monkeypatch, tmp_path):
    monkeypatch.delenv("SKIP2LORA_RUN_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_run_dir() == tmp_path / ".cache" / "skip2lora" / "vboard"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_run_dir() == tmp_path / "xdg" / "skip2lora" / "vboard"
    monkeypatch.setenv("SKIP2LORA_RUN_DIR", "~/board2")
    assert default_run_dir() == tmp_path / "board2"
