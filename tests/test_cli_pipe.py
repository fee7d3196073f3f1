"""A reader that goes away (`skip2lora ... | head -1`) must end the command quietly."""
import subprocess
import sys
from pathlib import Path

import pytest

SKIP2LORA = Path(sys.executable).with_name("skip2lora")


def run_into_closed_pipe(argv):
    proc = subprocess.Popen([str(SKIP2LORA), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first byte
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    return proc.returncode, err


def test_a_command_ends_quietly_with_the_sigpipe_status():
    status, err = run_into_closed_pipe(["boards"])
    assert err == ""  # no BrokenPipeError traceback, no "Exception ignored" at exit
    assert status == 141


@pytest.mark.parametrize("argv", [["--help"], ["compile", "--help"], ["--version"]])
def test_argparse_output_into_a_closed_pipe_is_quiet(argv):
    status, err = run_into_closed_pipe(argv)
    assert err == ""
    assert status in (0, 141)
