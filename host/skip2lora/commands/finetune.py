"""`skip2lora finetune`: pack and upload a dataset, train on the board, show its progress.

Training runs on the board (s2l.job.finetune); the host only sends data, starts the job through
the raw REPL and turns the board's one-line-per-epoch reports into a progress bar. The board
saves the adapters after every finished epoch, so Ctrl-C (or a cut link) loses at most the
epoch in progress, and --resume continues from the last one saved.
"""
import math
import sys
from pathlib import Path

from skip2lora.board.link import (BOARD_ADAPTERS, BOARD_CACHE, BOARD_DATASET, BOARD_MODEL,
                                  BoardInterrupted, BoardLink, parse_progress, sha256)
from skip2lora.commands.common import add_config_arguments, add_port_argument
from skip2lora.config import BOARD_METHODS, LR_AUTO, FinetuneConfig
from skip2lora.data.files import load_labelled
from skip2lora.errors import UserError
from skip2lora.model.formats import DTYPE_F32, DTYPE_I8, dataset_from_arrays, encode_dataset, read_model
from skip2lora.training.step_size import lr_for_board, parse_lr

# The FinetuneConfig fields that are options of `finetune` (their help and defaults are there).
OPTIONS = ("method", "epochs", "lr", "batch_size", "rank", "seed", "targets", "dataset_dtype",
           "backend")
MODEL_MISSING = "flash a model first: skip2lora flash MODEL.s2lm"
EPOCH_SILENCE_S = 3600  # longest an epoch may run without a line before the board counts as lost


def register(subparsers):
    parser = subparsers.add_parser(
        "finetune", help="fine-tune the flashed model on the board",
        description="Upload a labelled dataset (.npz with arrays x, y; .csv with the label in "
                    "the last column; or .s2ld), then fine-tune the model on the board with "
                    "progress shown per epoch. Ctrl-C stops the board cleanly and keeps the "
                    "adapters of the last finished epoch. Give ':PATH' for a dataset already "
                    "on the board.")
    parser.add_argument("--data", required=True, help="DATA.npz, DATA.csv, DATA.s2ld or :BOARD_PATH")
    add_port_argument(parser)
    parser.add_argument("--model", default=None,
                        help="the .s2lm that was flashed, to check the data against it before "
                             "uploading (default: read it back from the board)")
    add_config_arguments(
        parser, FinetuneConfig, OPTIONS,
        method=dict(choices=BOARD_METHODS),
        lr=dict(default=LR_AUTO, type=parse_lr),
        rank=dict(default=None, help="adapter rank (default: the model's)"),
        targets=dict(default=None,
                     help="layer inputs with a skip adapter: all, hidden, or 0-based indexes "
                          "like 0,2 (default: what the model was compiled with)"))
    parser.add_argument("--resume", action="store_true",
                        help="continue from the adapters saved on the board")
    parser.set_defaults(run=run)


def load_dataset_bytes(path, model, model_name, dtype):
    """The .s2ld bytes for a local dataset file, checked against the model before anything
    is uploaded (packing .npz/.csv on the way)."""
    x, y = load_labelled(path, model.dims[0], model.dims[-1], model_name)
    if not len(y):
        raise UserError("the dataset holds no samples", path)
    if Path(path).suffix == ".s2ld":
        return Path(path).read_bytes(), len(y)
    code = DTYPE_I8 if dtype == "int8" else DTYPE_F32
    return encode_dataset(dataset_from_arrays(x, y, model.dims[-1], code)), len(y)


def board_targets(spec):
    """--targets as the board's Trainer takes it: 'all', 'hidden' or a list of layer indexes."""
    if spec in ("all", "hidden"):
        return spec
    try:
        return sorted({int(part) for part in spec.split(",")})
    except ValueError:
        raise UserError(f"--targets {spec!r} is not all, hidden or 0-based layer indexes like "
                        f"0,2") from None


def board_lr(lr):
    """lr rounded to the 15-bit mantissa the board's fixed-point path keeps of it (qmath.q15).
    Boards parse the decimal we send with their own float width and parser; from a value on
    that grid, any of them lands within a float32 ulp of it and rounds back to the same
    mantissa, so every board trains with the same step."""
    if not lr > 0 or math.isinf(lr):
        return lr
    m, e = math.frexp(lr)
    return math.ldexp(math.floor(m * 32768 + 0.5), e - 15)


def job_arguments(args, data_path):
    """The keywords of s2l.job.finetune for these options (link.call checks them)."""
    opts = dict(model=BOARD_MODEL, data=data_path, adapters=BOARD_ADAPTERS, cache=BOARD_CACHE,
                method=args.method, epochs=args.epochs, lr=board_lr(args.lr),
                batch_size=args.batch_size,
                seed=args.seed, resume=args.resume,
                backend=None if args.backend == "auto" else args.backend)
    if args.rank:
        opts["rank"] = args.rank
    if args.targets:
        opts["targets"] = board_targets(args.targets)
    return opts


class Progress:
    """Turns the board's `S2L ...` lines into a progress bar on a terminal, or into one plain
    line per epoch when the output goes to a log; other board output is printed as is."""

    def __init__(self, epochs):
        self.epochs = epochs
        self.pending = b""
        self.records = []
        self.stopped = None  # the epoch whose adapters the board kept when it was stopped
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=epochs, unit="epoch", desc="fine-tuning on the board",
                            dynamic_ncols=True)

    def say(self, text):
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def feed(self, chunk):
        self.pending += chunk
        while b"\n" in self.pending:
            line, self.pending = self.pending.split(b"\n", 1)
            self.line(line)

    def line(self, line):
        record = parse_progress(line)
        if record is None:
            text = line.decode(errors="replace").rstrip()
            if text:
                self.say(text)
        elif "epoch" in record and "loss" in record:
            self.records.append(record)
            summary = (f"loss {record['loss']:.4f}, train acc {100 * record['acc']:.1f} %, "
                       f"{record['ms']} ms, {record.get('cache_reads', 0)} samples from the cache")
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix_str(summary)
            else:
                self.say(f"  epoch {record['epoch']}/{self.epochs}: {summary}")
        elif "stopped" in record:
            self.stopped = int(record["stopped"])
        elif "resume" in record:
            if self.bar is not None:
                self.bar.update(int(record["resume"]))
            self.say(f"  resuming after epoch {record['resume']} (adapters saved on the board)")

    def close(self):
        if self.bar is not None:
            self.bar.close()


def run(args):
    with BoardLink(args.port) as link:
        model_name = args.model or f"{BOARD_MODEL} on the board"
        if args.model:
            model = read_model(args.model)
            on_board = link.file_sha256(BOARD_MODEL)
            if on_board != sha256(Path(args.model).read_bytes()):
                what = "holds no model" if on_board is None else \
                    f"holds another model (or a partial copy) at {BOARD_MODEL}"
                raise UserError(f"the board {what}, not {args.model}; run `skip2lora flash "
                                f"{args.model}` first", link.port)
        else:  # read back and checked whole (CRCs) before anything is uploaded or trained
            model = read_model(link.read_file(BOARD_MODEL, missing=MODEL_MISSING), model_name)
        if args.data.startswith(":"):
            data_path = args.data[1:]
            print(f"dataset: {data_path} already on the board")
        else:
            data, n = load_dataset_bytes(args.data, model, model_name, args.dataset_dtype)
            data_path = BOARD_DATASET
            if link.file_sha256(data_path) == sha256(data):
                print(f"dataset: {n} samples, unchanged on the board")
            else:
                print(f"dataset: uploading {n} samples ({len(data):,} bytes) to "
                      f"{data_path}")
                link.write_file(data_path, data)
        args.lr = lr_for_board(args, model, model_name)
        print(f"training {args.method} on the board: {args.epochs} epochs, lr {args.lr}, "
              f"batch {args.batch_size}, seed {args.seed}")
        progress = Progress(args.epochs)
        try:
            link.call("s2l.job.finetune", on_output=progress.feed, timeout=EPOCH_SILENCE_S,
                      **job_arguments(args, data_path))
        except BoardInterrupted:
            progress.close()
            done = progress.stopped
            if done is None:
                done = progress.records[-1]["epoch"] if progress.records else 0
            if done:
                print(f"stopped on the board after epoch {done}; the adapters of epoch {done} "
                      f"are saved in {BOARD_ADAPTERS} (continue with --resume, fetch with "
                      f"`skip2lora pull`)")
            else:
                print("stopped on the board before the first epoch finished; no adapters were "
                      "saved by this run")
            return 130
        progress.close()
    if progress.records:
        last = progress.records[-1]
        total_ms = sum(r["ms"] for r in progress.records)
        print(f"done: epoch {last['epoch']}, loss {last['loss']:.4f}, train accuracy "
              f"{100 * last['acc']:.1f} %, {total_ms / 1000:.1f} s on the board; adapters in "
              f"{BOARD_ADAPTERS} (fetch with `skip2lora pull`)")
    return 0
