"""`skip2lora board start|stop|status`: a virtual MicroPython board that mpremote drives.

The board is the MicroPython unix port behind a pty, with its flash in an image file; see
skip2lora.vboard and docs/virtual-board.md. While it runs, its port is the default PORT of every
command that talks to a board.
"""
import time
from pathlib import Path

from skip2lora import vboard
from skip2lora.errors import UserError


def register(subparsers):
    parser = subparsers.add_parser(
        "board", help="start, stop or inspect the virtual board",
        description="Run the MicroPython unix port as a board behind a pty. `mpremote connect "
                    "PORT` opens it as it opens /dev/ttyACM0, and every skip2lora command that "
                    "talks to a board uses it when no --port is given. State, log and the "
                    f"default image live in $SKIP2LORA_RUN_DIR (default {_home(vboard.default_run_dir())}).")
    actions = parser.add_subparsers(dest="board_action", required=True, metavar="ACTION")
    start = actions.add_parser("start", help="start the virtual board and print its port",
                               description="Start the virtual board in the background and print "
                                           "the port to give mpremote.")
    start.add_argument("--image", metavar="FILE",
                       help="flash image (created blank and formatted as LittleFS on first boot; "
                            "default: flash.img in the run dir)")
    start.add_argument("--heap", default=vboard.format_size(vboard.DEFAULT_HEAP),
                       help="MicroPython heap size (default: %(default)s, about an rp2040's)")
    start.add_argument("--flash", default=None,
                       help=f"size of a new image (default: "
                            f"{vboard.format_size(vboard.DEFAULT_FLASH)}; an existing image "
                            "keeps its size)")
    actions.add_parser("stop", help="stop the virtual board (the image stays)")
    actions.add_parser("status", help="say whether it runs, its port, image, heap and flash use "
                                      "(exit status 0 if running, 1 if not)")
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
    run_dir = vboard.default_run_dir().resolve()
    image = Path(args.image).expanduser().resolve() if args.image else run_dir / vboard.IMAGE_NAME
    heap = vboard.parse_size(args.heap, "heap size")
    state = vboard.read_state(run_dir)
    if state is not None:
        if Path(state["image"]) != image or state["heap"] != heap:
            raise UserError(f"a virtual board is already running with image {state['image']} and "
                            f"heap {vboard.format_size(state['heap'])}: run `skip2lora board "
                            "stop` first")
        print(f"virtual board already running on {state['port']}")
        print(state["port"])
        return 0
    began = time.monotonic()
    board = vboard.VirtualBoard(image=image, heap=heap, flash=args.flash, run_dir=run_dir,
                                detach=True)
    board.start()
    print(f"virtual board started in {time.monotonic() - began:.2f} s: "
          f"heap {vboard.format_size(board.heap)}, flash {vboard.format_size(board.flash)}, "
          f"image {board.image}")
    print(f"use: mpremote connect {board.port} repl   (skip2lora commands use it by default)")
    print(board.port)
    return 0


def _stop():
    state = vboard.stop()
    if state is None:
        print("virtual board: not running")
    else:
        print(f"virtual board stopped (image {state['image']})")
    return 0


def _status():
    run_dir = vboard.default_run_dir()
    state = vboard.read_state(run_dir)
    if state is None:
        print("virtual board: stopped")
        image = run_dir / vboard.IMAGE_NAME
        if image.exists():
            print(f"image: {image}")
            print(f"flash: {_usage(image)}")
        return 1
    uptime = int(time.time() - state["started"])
    print(f"virtual board: running (pid {state['pid']}, up {uptime // 60}m{uptime % 60:02d}s)")
    print(f"port:  {state['port']} -> {state['pts']}")
    print(f"image: {state['image']}")
    print(f"heap:  {vboard.format_size(state['heap'])}")
    print(f"flash: {_usage(state['image'])}")
    print(f"log:   {run_dir / vboard.LOG_FILE}")
    return 0


def _usage(image):
    used, total = vboard.image_usage(image)
    if used is None:
        return f"{vboard.format_size(total)}, not formatted yet"
    return (f"{used // 1024} KiB used of {total // 1024} KiB "
            f"({used // vboard.BLOCK_SIZE} of {total // vboard.BLOCK_SIZE} blocks)")
