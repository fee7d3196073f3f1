"""`skip2lora flash`: put the device package, a compiled model and the board config on a board."""
import time

from skip2lora.board import deploy, fleet
from skip2lora.commands.common import add_port_argument, add_samples_argument
from skip2lora.board.profiles import Board, get_board
from skip2lora.board.budget import estimate
from skip2lora.config import FinetuneConfig
from skip2lora.errors import UserError
from skip2lora.model.formats import read_model
from skip2lora.board.link import BoardLink


def register(subparsers):
    parser = subparsers.add_parser(
        "flash", help="copy the device package and a compiled model to a board",
        description="Copy the device package (compiled to .mpy for the board's own architecture "
                    "and .mpy version, or plain .py where mpy-cross cannot target it), the model "
                    "and the board config to a board with mpremote. Unchanged files are skipped "
                    "and every file written is verified by sha256.")
    parser.add_argument("model", help="compiled model (.s2lm from `skip2lora compile`)")
    add_port_argument(parser)
    parser.add_argument("--board", default=None,
                        help="board profile to budget against (default: the heap and flash the "
                             "board itself reports)")
    add_samples_argument(parser)
    parser.add_argument("--force", action="store_true", help="flash even if it does not fit")
    parser.set_defaults(run=run)


def measured_board(info, profile=None):
    """A Board from what the connected board reports; a named profile keeps its own figures."""
    if profile:
        return get_board(profile)
    wide = info.arch in ("x64", "aarch64")  # a 64-bit port: GC blocks and pointers are twice as big
    return Board("connected", info.describe(), info.heap_total, info.fs_free, info.arch or "none",
                 word_bits=64 if wide else 32, float_bits=64 if wide else 32)


def run(args):
    if args.samples < 1:
        raise UserError(f"--samples {args.samples} must be at least 1")
    model = read_model(args.model)
    if fleet.several(args.port):
        return fleet.run_fleet(args.port, lambda port: flash_board(args, model, port), "flash")
    return flash_board(args, model, fleet.single(args.port))


def flash_board(args, model, port):
    """Flash one board (a fleet runs this once per --port)."""
    started = time.time()
    with BoardLink(port) as link:
        info = link.info()
        print(f"board: {info.describe()}")
        print(deploy.describe_board_config(link))
        budget = estimate(model.dims, measured_board(info, args.board),
                          dtype="int8" if model.dtype else "f32", rank=model.rank,
                          mask=model.adapter_mask, samples=args.samples,
                          dataset_dtype=FinetuneConfig.dataset_dtype,
                          batch_size=FinetuneConfig.batch_size)
        # the connected board's facts are printed above; a named profile's are news
        for line in budget.lines(board_line=args.board is not None):
            print(line)
        if not budget.fits and not args.force:
            raise UserError(budget.refusal(), args.model)
        mode = (f".mpy for {info.arch}" if deploy.can_use_mpy(info)
                else "plain .py (mpy-cross cannot target this board)")
        print(f"device package: {mode}")
        uploads = deploy.package_uploads(info)
        uploads += [deploy.model_upload(args.model),
                    deploy.config_upload(args.model, args.board or "connected",
                                         {"rank": model.rank, "alpha": model.alpha})]
        written, skipped = deploy.sync(link, uploads)
    fleet.record(board_s=time.time() - started)
    print(f"flashed {link.port}: {written} written, {skipped} unchanged, all verified by sha256 "
          f"({time.time() - started:.1f} s)")
    return 0

