"""`skip2lora compile`: a user's ONNX or torch model to the `.s2lm` file a board loads.

Everything a user could find out too late on the board is checked here first: that the
compiled arrays compute what the original model computes, what int8 costs in accuracy, and
whether the model, its adapters and the fine-tuning data fit the board's heap and flash.
"""
from skip2lora.model import compiler
from skip2lora.board import budget
from skip2lora.board.profiles import BOARDS, get_board
from skip2lora.commands.common import add_config_arguments, add_samples_argument
from skip2lora.config import FinetuneConfig
from skip2lora.data.files import load_labelled
from skip2lora.errors import UserError
from skip2lora.model.formats import write_model
from skip2lora.model.importers import import_model


def register(subparsers):
    parser = subparsers.add_parser(
        "compile", help="compile an ONNX or PyTorch MLP into a .s2lm model file",
        description="Import an MLP (ONNX, torch.save or TorchScript), check the compiled arrays "
                    "against the original runtime, estimate RAM and flash on a board, and write "
                    "the .s2lm model file.")
    parser.add_argument("model", help="model file: .onnx, or .pt/.pth (torch.save or TorchScript)")
    parser.add_argument("-o", "--output", required=True, help="the .s2lm file to write")
    parser.add_argument("--dtype", choices=compiler.DTYPES, default=None,
                        help="frozen weight storage: f32 (exact) or int8 (per-channel scales, "
                             "4x smaller, small accuracy change); default f32, or int8 when "
                             "f32 does not fit the --board")
    add_config_arguments(parser, FinetuneConfig, ("rank", "alpha", "targets"))
    parser.add_argument("--board", help="board to budget for (see `skip2lora boards`); "
                                        "refuses a model that does not fit")
    add_samples_argument(parser)
    add_config_arguments(parser, FinetuneConfig, ("dataset_dtype",), dataset_dtype=dict(
        help="how the fine-tuning samples will be packed on the board, for the flash budget "
             "(default int8)"))
    parser.add_argument("--test-data", metavar="FILE",
                        help="labelled samples (.npz with arrays x, y; .csv with the label in "
                             "the last column; or .s2ld) to report the accuracy of the "
                             "compiled model, float and int8")
    parser.add_argument("--force", action="store_true",
                        help="write the file even if it does not fit the board or fails the "
                             "float check")
    parser.set_defaults(run=run)


def _check_line(label, check, tolerance=None):
    verdict = ""
    if tolerance is not None:
        verdict = (f": ok (tolerance {tolerance:g})" if check.relative_error <= tolerance
                   else f": FAILED (tolerance {tolerance:g})")
    return f"{label} vs {check.runtime}: {check.summary()}{verdict}"


def _estimate(args, model, board, dtype):
    """The budget of fine-tuning this model with `skip2lora finetune`'s defaults (method,
    batch size, backend, dataset packing: skip2lora.config), the rank and targets compiled in,
    and --samples samples."""
    return budget.estimate(model.dims, board, dtype, model.rank, model.adapter_mask,
                           args.samples, args.dataset_dtype,
                           batch_size=FinetuneConfig.batch_size)


def choose_dtype(args, model):
    """--dtype, or with a --board and no --dtype: f32 if it fits the board, else int8 (with
    a one-line note). None: f32 (no board to check against)."""
    if args.dtype is not None or args.board is None:
        return args.dtype or "f32"
    board = get_board(args.board)
    exact = _estimate(args, model, board, "f32")
    if exact.fits:
        return "f32"
    small = _estimate(args, model, board, "int8")
    if not small.fits:
        return "f32"  # neither fits: the refusal below names the f32 figures and --dtype int8
    print(f"note: f32 weights do not fit {board.name} (RAM {budget.kib(exact.ram_total)} of "
          f"{budget.kib(board.heap_bytes)}, flash {budget.kib(exact.flash_total)} of "
          f"{budget.kib(board.fs_bytes)}); compiling int8 instead (--dtype f32 insists)")
    return "int8"


def _report_budget(args, model, dtype):
    if args.board is None:
        print(f"RAM and flash needed for fine-tuning with the defaults, {args.samples} samples, "
              f"per board (--board NAME checks one):")
        for board in BOARDS.values():
            b = _estimate(args, model, board, dtype)
            print(f"  {board.name:<14} RAM {budget.kib(b.ram_total):>11} of "
                  f"{budget.kib(board.heap_bytes):>11}, flash {budget.kib(b.flash_total):>11} of "
                  f"{budget.kib(board.fs_bytes):>11}: {'fits' if b.fits else 'does not fit'}")
        return
    b = _estimate(args, model, get_board(args.board), dtype)
    for line in b.lines():
        print(line)
    if not b.fits:
        if not args.force:
            raise UserError(b.refusal())
        print("  --force: writing it anyway")


def run(args):
    if args.samples < 1:
        raise UserError(f"--samples {args.samples} must be at least 1")
    if args.board is not None:
        get_board(args.board)  # fail on a typo before the slow import
    imported = import_model(args.model)
    network = imported.network
    print(f"imported {args.model} ({imported.source}): {len(network.layers)} linear layers, "
          f"{'-'.join(map(str, network.dims))}")
    for note in network.notes:
        print(f"  {note}")

    exact = compiler.compile_network(network, "f32", args.rank, args.alpha, args.targets)
    x = compiler.random_inputs(network.dims[0])
    check = compiler.check_against_runtime(imported, exact, x)
    print(_check_line("float32 arrays", check, compiler.F32_TOLERANCE))
    if not check.relative_error <= compiler.F32_TOLERANCE and not args.force:  # NaN fails too
        raise UserError(f"the compiled float32 model disagrees with {check.runtime} "
                        f"({check.summary()}): the model does something the importer did not "
                        f"see; please report it (--force writes the file anyway)")
    model = exact
    dtype = choose_dtype(args, exact)
    if dtype == "int8":
        model = compiler.compile_network(network, "int8", args.rank, args.alpha, args.targets)
        print(_check_line("int8 weights", compiler.check_against_runtime(imported, model, x)))

    if args.test_data:
        tx, ty = load_labelled(args.test_data, network.dims[0], network.n_classes, args.model)
        float_acc = compiler.accuracy(exact, tx, ty)
        line = f"test data ({len(ty)} samples): float32 accuracy {100 * float_acc:.2f} %"
        if dtype == "int8":
            int8_acc = compiler.accuracy(model, tx, ty)
            line += (f", int8 {100 * int8_acc:.2f} % "
                     f"(change {100 * (int8_acc - float_acc):+.2f} pt)")
        print(line)

    _report_budget(args, model, dtype)
    try:
        data = write_model(args.output, model)
    except OSError as exc:
        raise UserError(f"cannot write the model file: {exc.strerror or exc}",
                        args.output) from None
    targets = compiler.describe_targets(model.adapter_mask, len(model.layers))
    print(f"wrote {args.output}: {len(data)} bytes, {dtype}, rank {model.rank}, alpha "
          f"{model.alpha:g}, adapters on {targets}")
    return 0
