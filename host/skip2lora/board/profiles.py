"""What skip2lora knows about each supported board, so compile can tell whether a model fits.

Figures come from /work/shared/PLATFORMS.md (read from the MicroPython v1.29-preview sources
and issue threads) unless a comment says otherwise; "uncertain" marks figures nobody has
measured on a real board yet. The budget uses the heap a fresh interpreter offers, not the
chip's RAM, because the MicroPython heap is all a Python program can allocate.
"""
from dataclasses import dataclass

from skip2lora.errors import UserError

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    heap_bytes: int  # MicroPython GC heap available to the program
    fs_bytes: int  # default filesystem size (model, dataset, cache, adapters live here)
    mpy_arch: str  # mpy-cross -march for the viper kernels
    word_bits: int = 32  # viper int width: where accumulators wrap
    float_bits: int = 32  # MicroPython float precision on this port
    notes: str = ""


BOARDS = {
    board.name: board for board in (
        Board("rp2040", "Raspberry Pi Pico (RP2040, Cortex-M0+)",
              # GC total 192064 reported by one build: all RAM after .bss.
              heap_bytes=192064,
              # 1408 KiB LittleFS on the Pico (the Pico W leaves 848 KiB).
              fs_bytes=1408 * KiB,
              mpy_arch="armv6m",
              notes="Pico W: filesystem 848 KiB"),
        Board("rp2350", "Raspberry Pi Pico 2 (RP2350, Cortex-M33)",
              # ~450-480 KB, uncertain: the low end, so a "fits" is not optimistic.
              heap_bytes=450 * KiB,
              fs_bytes=3 * MiB,  # 3 MiB LittleFS
              mpy_arch="armv7emsp",
              notes="heap size uncertain (450-480 KB)"),
        Board("esp32", "ESP32 without PSRAM (Xtensa LX6)",
              # Grows from 56 KiB to ~110 KB as the IDF heap allows; uncertain, and the full
              # figure is reached only when Wi-Fi/BLE are not started.
              heap_bytes=110 * KiB,
              fs_bytes=2 * MiB,  # ~2 MiB LittleFS on 4 MiB modules
              mpy_arch="xtensawin",
              notes="heap grows from 56 KiB to ~110 KB (uncertain); less with Wi-Fi on"),
        Board("esp32s3-psram", "ESP32-S3 with 8 MB PSRAM (Xtensa LX7)",
              # The heap grows into PSRAM, ~8 MB; uncertain, some PSRAM stays with the IDF.
              heap_bytes=8 * MiB,
              fs_bytes=6 * MiB,  # ~6 MiB on 8 MiB flash modules
              mpy_arch="xtensawin",
              notes="heap ~8 MB in PSRAM (uncertain)"),
        Board("pyboard", "pyboard v1.1 (STM32F405, Cortex-M4F)",
              heap_bytes=100 * KiB,  # ~100 KB
              # 112 KiB internal FAT; an SD card, when inserted, is far larger.
              fs_bytes=112 * KiB,
              mpy_arch="armv7emsp",
              notes="internal flash 112 KiB: keep dataset and cache on an SD card"),
        Board("unix", "MicroPython unix port (the virtual board used by the tests)",
              # ports/unix/main.c: heap_size = 1024 * 1024 * (sizeof(mp_uint_t) / 4), i.e.
              # 2 MiB on a 64-bit host (change with -X heapsize).
              heap_bytes=2 * MiB,
              # The files live in a host directory: no real limit, a nominal 64 MiB.
              fs_bytes=64 * MiB,
              mpy_arch="x64",
              word_bits=64, float_bits=64,
              notes="64-bit ints and double floats: hides the overflow and precision bugs of "
                    "real boards"),
    )
}


def get_board(name):
    try:
        return BOARDS[name]
    except KeyError:
        raise UserError(f"unknown board {name!r}; known boards: {', '.join(BOARDS)} "
                        f"(see `skip2lora boards`)") from None
