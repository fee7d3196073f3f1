"""Virtual boards: a board behind a pty that the real mpremote drives, of four kinds.

`unix` runs the MicroPython unix port (unix.py, unix_supervisor.py); `cortex-m0plus` and
`cortex-m4f` run real Cortex-M firmware under QEMU (qemu.py); `circuitpython` runs the
CircuitPython unix port made to look like a board (circuitpython.py). base.py holds what they share:
the run dir, state, port link, stop and kill. docs/virtual-board.md describes each kind.
"""
from skip2lora.board.virtual.base import (KINDS, VirtualBoard, default_port, default_run_dir,
                                          read_state, start_board, stop)
from skip2lora.board.virtual.images import open_image
from skip2lora.board.virtual.qemu import QemuBoard  # registers its kinds with VirtualBoard
from skip2lora.board.virtual.unix import UnixBoard  # registers its kinds with VirtualBoard
from skip2lora.board.virtual.circuitpython import CircuitPythonBoard  # registers its kind

__all__ = ["KINDS", "CircuitPythonBoard", "QemuBoard", "UnixBoard", "VirtualBoard", "default_port", "default_run_dir", "open_image",
           "read_state", "start_board", "stop"]
