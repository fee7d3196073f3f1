"""The Cortex-M kinds: real MicroPython firmware for armv6m / armv7emsp under qemu-system-arm.

The unix kind is 64-bit with double floats and no native Cortex-M code, so bugs that only a
32-bit board shows (viper ints wrapping at 32 bits, single floats, .mpy arch, a 192 KiB heap
that fragments) pass there. These kinds run the firmware built from MicroPython's ports/qemu
(../shared/platforms, see its README) with QEMU's UART on a pty and an instruction-count clock.

    mpremote --- <run dir>/tty -> /dev/pts/N --- qemu-system-arm -machine mps2-an385|an386
                                                  firmware; '/' = LittleFS on a 4 MiB RAM disk
    supervisor (python -m skip2lora.board.virtual.qemu_supervisor supervise): starts QEMU with the image
    preloaded into the RAM disk, speaks QMP to it on stdio, and on a clean stop pauses the CPU
    and saves the RAM disk back over the image.

The supervisor also keeps the pty open. QEMU takes a pty nobody holds as disconnected and then
looks for the host's bytes only once a second, which made every mpremote call a second slower.
"""
import os
import shutil
from pathlib import Path

from skip2lora.board.virtual.base import HOST_DIR, KiB, VirtualBoard, format_size
from skip2lora.board.virtual.images import RAM_DISK_BYTES
from skip2lora.errors import UserError
from skip2lora.model.formats import write_atomic

MACHINES = {"cortex-m0plus": "mps2-an385", "cortex-m4f": "mps2-an386"}
HEAP = 192 * KiB  # MICROPY_HEAP_SIZE the firmware was built with
READY_TIMEOUT = 20.0  # boot, and formatting a blank RAM disk, take well under a second


def platforms_dir():
    """$SKIP2LORA_PLATFORMS, else ../shared/platforms beside the checkout."""
    explicit = os.environ.get("SKIP2LORA_PLATFORMS")
    if explicit:
        return Path(explicit).expanduser()
    return HOST_DIR.parent.parent / "shared" / "platforms"


def find_firmware(kind):
    path = platforms_dir() / f"{kind}.elf"
    if not path.is_file():
        raise UserError(f"no {kind} firmware at {path}: set SKIP2LORA_PLATFORMS to the folder "
                        "holding cortex-m0plus.elf and cortex-m4f.elf, or build them from "
                        "MicroPython's ports/qemu (docs/virtual-board.md)")
    return path


def find_qemu():
    found = shutil.which("qemu-system-arm")
    if not found:
        raise UserError("qemu-system-arm is not installed: `apt-get install qemu-system-arm` "
                        "(the Cortex-M virtual boards run their firmware under it)")
    return found


def prepare_ram_disk(image):
    """A new image is all zeros (the firmware formats it on boot); an old one must be 4 MiB."""
    image = Path(image)
    if not image.exists():
        image.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(image, bytes(RAM_DISK_BYTES))
        return
    size = image.stat().st_size
    if size != RAM_DISK_BYTES:
        raise UserError(f"not a RAM-disk image: it holds {size} bytes where a Cortex-M board's "
                        f"RAM disk is {RAM_DISK_BYTES} (1024 blocks of 4096); give another "
                        "--image, or remove this one to start blank", image)


class QemuBoard(VirtualBoard):
    """`VirtualBoard(image, kind="cortex-m0plus" | "cortex-m4f")`: fixed heap and disk.

    stop() saves the RAM disk to the image; kill() (a power cut) loses what the board wrote
    since the last start, as a RAM disk does.
    """

    kinds = ("cortex-m0plus", "cortex-m4f")
    supervisor_module = "skip2lora.board.virtual.qemu_supervisor"

    def __init__(self, image=None, *, kind, heap=None, flash=None, run_dir=None, detach=False):
        for option, given in (("--heap", heap), ("--flash", flash)):
            if given is not None:
                raise UserError(f"{option} does not apply to a {kind} board: its firmware has "
                                f"a fixed {format_size(HEAP)} heap and a "
                                f"{format_size(RAM_DISK_BYTES)} RAM disk; drop {option}")
        self.image_name = f"{kind}.img"
        super().__init__(image, kind=kind, run_dir=run_dir, detach=detach)
        self.heap, self.flash = HEAP, RAM_DISK_BYTES

    def prepare(self):
        qemu, firmware = find_qemu(), find_firmware(self.kind)
        prepare_ram_disk(self.image)
        return ["--kind", self.kind, "--qemu", qemu, "--firmware", str(firmware)]

    def describe(self):
        return (f"{self.kind} firmware under QEMU, heap {format_size(self.heap)}, "
                f"RAM disk {format_size(self.flash)}, image {self.image}")
