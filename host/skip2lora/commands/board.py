"""`skip2lora board start|stop|status`: a virtual MicroPython board that mpremote drives.

`--emulate unix` (the default) is the MicroPython unix port behind a pty with its flash in an
image file; `cortex-m0plus` and `cortex-m4f` run real Cortex-M firmware under QEMU with a RAM
disk saved to the image on stop; `circuitpython` runs the CircuitPython unix port as a board
(no viper, no time.ticks_*, a FAT drive in the image). See skip2lora.board.virtual and docs/virtual-board.md. While a
board runs, its port is the default PORT of every command that talks to a board.

`--count N` runs N boards of one kind side by side, each in a run dir of its own (the first is
the run dir, the others its sub-folders board2, board3, ...: base.slot_dir), so a fleet of
virtual boards stands in for a room of real ones; `status` lists them all and `stop` stops
them all, or the one on --port. `status --port` asks a board itself, real or virtual.
"""
import time
from pathlib import Path

from skip2lora.board import fleet, virtual
from skip2lora.board.identity import board_facts
from skip2lora.board.link import BoardLink
from skip2lora.board.virtual import base
from skip2lora.board.virtual.images import BLOCK_SIZE, image_usage
from skip2lora.board.virtual.qemu import MACHINES as QEMU_KINDS
from skip2lora.board.virtual.unix import DEFAULT_FLASH, DEFAULT_HEAP
from skip2lora.commands.common import add_port_argument
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
    start.add_argument("--count", type=int, default=None, metavar="N",
                       help="run N boards of this kind (and heap), each with its own port and "
                            "image: those already running count, the others start beside "
                            "them")
    stop = actions.add_parser("stop", help="stop every virtual board, or the one on --port "
                                           "(the images stay)")
    add_port_argument(stop, help="the port of the virtual board to stop (once per board; "
                                 "default: stop them all)")
    status = actions.add_parser("status", help="say whether they run, their kind, port, image, "
                                               "heap and flash use (exit status 0 if one runs, 1 "
                                               "if none); with --port, ask the board itself")
    add_port_argument(status, help="ask the board on PORT (real or virtual) what it is and its "
                                   "unique id; once per board")
    parser.set_defaults(run=run)


def run(args):
    action = args.board_action
    if action == "start":
        return _start(args)
    if action == "stop":
        return _stop(args.port)
    if action == "status":
        if args.port and fleet.several(args.port):
            return fleet.run_fleet(args.port, _ask, "board status")
        if args.port:
            return _ask(args.port[0])
        return _status()
    raise UserError(f"unknown board action {action!r}: use start, stop or status")


def _home(path):
    path = str(path)
    home = str(Path.home())
    return "~" + path[len(home):] if path.startswith(home + "/") else path


def _start(args):
    run_dir = base.default_run_dir().resolve()
    if args.count is not None:
        return _start_count(args, run_dir)
    board = virtual.VirtualBoard(args.image, kind=args.emulate, heap=args.heap, flash=args.flash,
                                 run_dir=run_dir, detach=True)
    state = base.read_state(run_dir)
    if state is not None:
        if (state["kind"], Path(state["image"]), state["heap"]) != (board.kind, board.image,
                                                                   board.heap):
            raise UserError(f"a {state['kind']} virtual board is already running with image "
                            f"{state['image']} and heap {base.format_size(state['heap'])}: run "
                            "`skip2lora board stop` first, or add --count 1 to run one like "
                            "this beside it")
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


def _start_count(args, run_dir):
    """--count N: N boards like this one running, counting those that already run."""
    if args.count < 1:
        raise UserError(f"--count {args.count}: give 1 or more boards")
    if args.image and args.count > 1:
        raise UserError("--image names one board's image: give it with --count 1, or leave it "
                        "out (each board keeps its own image in its run dir)")
    like = virtual.VirtualBoard(args.image, kind=args.emulate, heap=args.heap, flash=args.flash,
                                run_dir=run_dir, detach=True)
    running = [state for _, _, state in base.running_boards(run_dir)
               if (state["kind"], state["heap"]) == (like.kind, like.heap)
               and (not args.image or Path(state["image"]) == like.image)]
    ports = []
    for state in running[:args.count]:
        print(f"virtual {state['kind']} board already running on {state['port']}")
        ports.append(state["port"])
    for slot in base.free_slots(run_dir, args.count - len(ports)):
        board = virtual.VirtualBoard(args.image, kind=args.emulate, heap=args.heap,
                                     flash=args.flash, run_dir=base.slot_dir(run_dir, slot),
                                     detach=True)
        began = time.monotonic()
        board.start()
        print(f"virtual {board.kind} board started in {time.monotonic() - began:.2f} s: "
              f"{board.describe()}")
        ports.append(board.port)
    print(f"use: skip2lora flash|finetune|pull {' '.join('--port ' + p for p in ports)}")
    for port in ports:
        print(port)
    return 0


def _stop(ports=None):
    """Stop the boards on `ports`, or every running one."""
    run_dir = base.default_run_dir()
    boards = [base.find_board(port, run_dir) for port in ports] if ports else \
        base.running_boards(run_dir)
    if not boards:
        print("virtual board: not running")
    for _, slot_dir, _ in boards:
        state = base.stop(slot_dir)
        if state is not None:
            print(f"virtual {state['kind']} board stopped (image {state['image']})")
    return 0


def _ask(port):
    """`board status --port`: the board itself says what it is and its unique id."""
    with BoardLink(port) as link:
        facts = board_facts(link)
    print(f"board: {facts['board']}")
    print(f"id:    {facts['unique_id']}")
    where = facts.get("virtual")
    print(f"port:  {facts['port']}" + (f" (virtual {where['kind']} board, image "
                                       f"{where['image']})" if where else ""))
    return 0


def _status():
    run_dir = base.default_run_dir()
    boards = base.running_boards(run_dir)
    if len(boards) > 1:
        print(f"{len(boards)} virtual boards running:")
        for _, slot_dir, state in boards:
            print()
            _status_one(slot_dir, state)
        return 0
    if boards:
        return _status_one(boards[0][1], boards[0][2])
    print("virtual board: stopped")
    image = run_dir / "flash.img"
    if image.exists():
        print(f"image: {image}")
        print(f"flash: {_usage(image, 'unix')}")
    return 1


def _status_one(run_dir, state):
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
