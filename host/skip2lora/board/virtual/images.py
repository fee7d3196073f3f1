"""A virtual board's filesystem image read on the host with littlefs-python.

Each kind of board formats its LittleFS with its own settings, and littlefs-python must mount
it with the same ones: the unix kind's flash image uses progsize=256 as an rp2's does; the
Cortex-M firmware's RAM disk (its frozen _boot.py) uses vfs.VfsLfs2's defaults, readsize,
progsize and lookahead 32 (extmod/vfs_lfs.c), on a fixed 1024 blocks of 4096 bytes.
"""
from dataclasses import dataclass
from pathlib import Path

from skip2lora.errors import UserError

BLOCK_SIZE = 4096


@dataclass(frozen=True)
class Geometry:
    read_size: int
    prog_size: int
    lookahead: int
    block_count: int = None  # None: as many blocks as the file holds
    block_size: int = BLOCK_SIZE


FLASH_IMAGE = Geometry(read_size=32, prog_size=256, lookahead=32)  # the unix kind
RAM_DISK = Geometry(read_size=32, prog_size=32, lookahead=32, block_count=1024)  # QEMU kinds
RAM_DISK_ADDR = 0x20000000  # MPS2 SSRAM2/3, outside the firmware's heap
RAM_DISK_BYTES = RAM_DISK.block_count * BLOCK_SIZE
GEOMETRIES = {"unix": FLASH_IMAGE, "cortex-m0plus": RAM_DISK, "cortex-m4f": RAM_DISK}


def geometry(kind):
    try:
        return GEOMETRIES[kind]
    except KeyError:
        raise UserError(f"unknown virtual board kind {kind!r}: use one of "
                        f"{', '.join(GEOMETRIES)}") from None


def _littlefs(geo, buffer):
    import littlefs

    return littlefs.LittleFS(littlefs.UserContext(buffer=buffer), mount=False,
                             block_size=geo.block_size, block_count=len(buffer) // geo.block_size,
                             read_size=geo.read_size, prog_size=geo.prog_size,
                             lookahead_size=geo.lookahead)


def make_image(files, kind="cortex-m0plus", blocks=None):
    """The bytes of a `kind` board's image holding {board path: bytes} (folders made as
    needed), to preload a board with files instead of pushing them through its UART."""
    geo = geometry(kind)
    count = geo.block_count or blocks
    if not count:
        raise ValueError(f"a {kind} image needs its block count")
    fs = _littlefs(geo, bytearray(count * geo.block_size))
    fs.format()
    fs.mount()
    for name in sorted(files):
        parts = name.strip("/").split("/")
        for i in range(1, len(parts)):
            try:
                fs.mkdir("/".join(parts[:i]))
            except FileExistsError:
                pass
        with fs.open(name.strip("/"), "wb") as f:
            f.write(files[name])
    fs.unmount()
    return bytes(fs.context.buffer)


def image_files(data, kind="cortex-m0plus"):
    """{path: bytes} of every file in the image bytes `data` of a `kind` board."""
    fs = _littlefs(geometry(kind), bytearray(data))
    fs.mount()
    out = {}
    for top, _dirs, names in fs.walk("/"):
        for n in names:
            path = (top.rstrip("/") + "/" + n).lstrip("/")
            with fs.open(path, "rb") as f:
                out[path] = f.read()
    return out


def open_image(image, kind="unix"):
    """A littlefs.LittleFS over an in-memory copy of a `kind` board's image (never written).

    Use it to look at what the board wrote: `open_image(p).open("x.txt", "rb").read()`.
    Raises UserError if the image holds no LittleFS (e.g. blank: the board never booted).
    A circuitpython board's image is FAT: read by the interpreter (circuitpython.FatImage).
    """
    if kind == "circuitpython":  # imported here: circuitpython.py imports this module
        from skip2lora.board.virtual.circuitpython import open_fat_image
        return open_fat_image(image)
    geo = geometry(kind)
    image = Path(image)
    data = bytearray(image.read_bytes())
    if not data or len(data) % geo.block_size:
        raise UserError(f"not a flash image (size is not a multiple of {geo.block_size})", image)
    count = geo.block_count or len(data) // geo.block_size
    if len(data) != count * geo.block_size:
        raise UserError(f"not a {kind} image: it holds {len(data)} bytes, not "
                        f"{count * geo.block_size}", image)
    fs = _littlefs(geo, data)
    try:
        fs.mount()
    except Exception as error:  # littlefs.LittleFSError
        raise UserError(f"no LittleFS on the image ({error}); a new image is formatted when the "
                        "board first boots", image) from None
    return fs


def image_usage(image, kind="unix"):
    """(used_bytes, total_bytes) of the LittleFS on the image, or (None, size) if unformatted."""
    size = Path(image).stat().st_size
    if kind == "circuitpython":  # imported here: circuitpython.py imports this module
        from skip2lora.board.virtual.circuitpython import read_image
        read = read_image(image)
        return (None, size) if read is None else (read[2], read[3])
    try:
        fs = open_image(image, kind)
    except UserError:
        return None, size
    return fs.used_block_count * BLOCK_SIZE, size
