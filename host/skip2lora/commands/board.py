"""`skip2lora board start|stop|status`: a virtual MicroPython board that mpremote drives.

`--emulate unix` (the default) is the MicroPython unix port behind a pty with its flash in an
image file; `cortex-m0plus` and `cortex-m4f` run real Cortex-M firmware under QEMU with a RAM
disk saved to the image on stop; `circuitpython` runs the CircuitPython unix port as a board
(no viper, no time.ticks_*, a FAT drive in the image). See skip2lora.board.virtual and docs/virtual-board.md. While a
board runs, its port is the default PORT of every command that talks to a board.
"""
import time
from pathlib import Path

from skip2lora.board import virtual
from skip2lora.board.virtual import base
from skip2lora.board.virtual.images import BLOCK_SIZE, image_usage
from skip2lora.board.virtual.qemu import MACHINES as QEMU_KINDS
from skip2lora.board.virtual.unix import DEFAULT_FLASH, DEFAULT_HEAP
from skip2lora.errors import UserError


def register(subparsers):
    parser = subparsers.add_parser(
        "board", help="start, stop or inspect the virtual board",
        description="Run a virtual board behind a pty: the MicroPython unix port, Cortex-M "
                    "firmware under QEMU, or the CircuitPython unix port. `mpremote connect PORT` opens it as it opens "
                    "/dev/ttyACM0, and every skip2lora command that talks to a board uses it "
                    "when no --port is given. State, log and the default image live in "
                    f"$SKIP2LORA_RUN_DIR (default {_home(base.default_run_dir())}).")
    actions = parser.add_subparsers(dest="board_action", required=True, metavar="ACTION")
    start = actions.add_parser("start", help="start the virtual board and print its port",
                               description="Start the virtual board in the background and print "
                                           "the port to give mpremote.")
    start.add_argument("--emulate", default="unix", choices=virtual.KINDS, metavar="KIND",
                       help="unix (default: the MicroPython unix port, quick), cortex-m0plus or "
                            "cortex-m4f (real firmware under qemu-system-arm: 32-bit ints, "
                            "single floats, a 192K heap) or circuitpython (the CircuitPython "
                            "unix port as a board: no viper, .py deployed, a FAT drive)")
    start.add_argument("--image", metavar="FILE",
                       help="flash image, or for a Cortex-M kind its RAM-disk image (created "
                            "blank and formatted as LittleFS, FAT for circuitpython, on first "
                            "boot; default: flash.img, KIND.img, or circuitpy.img, in the run "
                            "dir)")
    start.add_argument("--heap", default=None,
                       help=f"unix and circuitpython kinds: heap size (default: "
                            f"{base.format_size(DEFAULT_HEAP)}, about an rp2040's)")
    start.add_argument("--flash", default=None,
                       help=f"unix and circuitpython kinds: size of a new image (default: "
                            f"{base.format_size(DEFAULT_FLASH)}; an existing image keeps its "
                            "size)")
    actions.add_parser("stop", help="stop the virtual board (the image stays)")
    actions.add_parser("status", help="say whether it runs, its kind, port, image, heap and "
                                      "flash use (exit status 0 if running, 1 if not)")
    parser.set_defaults(run=run)


def run(args):
    action = args.board_action
    if action == "start":
        return _start(args)
    if action == "stop":
        return _stop()
    if action == "status":
        return _status()
    raise UserError(f"unknown board action {action!r}: use start, stop or status")


def _home(path):
    path = str(path)
    home = str(Path.home())
    return "~" + path[len(home):] if path.startswith(home + "/") else path


def _start(args):
    run_dir = base.default_run_dir().resolve()
    board = virtual.VirtualBoard(args.image, kind=args.emulate, heap=args.heap, flash=args.flash,
                                 run_dir=run_dir, detach=True)
    state = base.read_state(run_dir)
    if state is not None:
        if (state["kind"], Path(state["image"]), state["heap"]) != (board.kind, board.image,
                                                                   board.heap):
            raise UserError(f"a {state['kind']} virtual board is already running with image "
                            f"{state['image']} and heap {base.format_size(state['heap'])}: run "
                            "`skip2lora board stop` first, or set SKIP2LORA_RUN_DIR to run "
                            "another board beside it")
        print(f"virtual board already running on {state['port']}")
        print(state["port"])
        return 0
    began = time.monotonic()
    board.start()
    print(f"virtual {board.kind} board started in {time.monotonic() - began:.2f} s: "
          f"{board.describe()}")
    print(f"use: mpremote connect {board.port} repl   (skip2lora commands use it by default)")
    print(board.port)
    return 0


def _stop():
    state = base.stop()
    if state is None:
        print("virtual board: not running")
    else:
        print(f"virtual {state['kind']} board stopped (image {state['image']})")
    return 0


def _status():
    run_dir = base.default_run_dir()
    state = base.read_state(run_dir)
    if state is None:
        print("virtual board: stopped")
        image = run_dir / "flash.img"
        if image.exists():
            print(f"image: {image}")
            print(f"flash: {_usage(image, 'unix')}")
        return 1
    uptime = int(time.time() - state["started"])
    print(f"virtual board: running (pid {state['pid']}, up {uptime // 60}m{uptime % 60:02d}s)")
    print(f"kind:  {_kind(state)}")
    print(f"port:  {state['port']} -> {state['pts']}")
    print(f"image: {state['image']}")
    print(f"heap:  {base.format_size(state['heap'])}")
    print(f"flash: {_usage(state['image'], state['kind'])}")
    print(f"log:   {run_dir / base.LOG_FILE}")
    return 0


def _kind(state):
    if state["kind"] == "unix":
        return "unix (the MicroPython unix port)"
    if state["kind"] == "circuitpython":
        return "circuitpython (the CircuitPython unix port as a board, a FAT drive)"
    return (f"{state['kind']} (firmware {state.get('firmware', '?')} under QEMU; the RAM disk "
            "is saved to the image on stop)")


def _usage(image, kind):
    used, total = image_usage(image, kind)
    note = " as of the last stop" if kind in QEMU_KINDS else ""
    if used is None:
        return f"{base.format_size(total)}, not formatted yet{note}"
    return (f"{used // 1024} KiB used of {total // 1024} KiB "
            f"({used // BLOCK_SIZE} of {total // BLOCK_SIZE} blocks){note}")
