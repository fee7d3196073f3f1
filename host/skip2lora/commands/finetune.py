"""`skip2lora finetune`: pack and upload a dataset, train on the board, show its progress.

Training runs on the board (s2l.job.finetune); the host only sends data, starts the job through
the raw REPL and turns the board's one-line-per-epoch reports into a progress bar. The board
saves the adapters after every finished epoch, so Ctrl-C (or a cut link) loses at most the
epoch in progress, and --resume continues from the last one saved.

Every option is checked here, in the CLI's names, before anything is uploaded: the board checks
them again, but in its API's words (momentum, resume=False) and only once the data is there.
What the board reports in `S2L` lines (what it trains with, a divergence, running out of heap, a
refused resume) comes out as one line in the CLI's options too.
"""
import argparse
import math
import sys
from pathlib import Path

from skip2lora.board import fleet
from skip2lora.board.link import (BOARD_ADAPTERS, BOARD_CACHE, BOARD_DATASET, BOARD_MODEL,
                                  BoardError, BoardInterrupted, BoardLink, parse_progress, sha256)
from skip2lora.commands.common import add_config_arguments, add_port_argument
from skip2lora.config import BOARD_METHODS, LR_AUTO, SKIP_METHODS, FinetuneConfig
from skip2lora.data.files import load_labelled
from skip2lora.errors import UserError
from skip2lora.model.formats import (DTYPE_F32, DTYPE_I8, MAX_RANK, dataset_from_arrays,
                                     decode_dataset, encode_dataset, read_adapters, read_model)
from skip2lora.training.step_size import LR_GRID, choose_lr, parse_lr

# The FinetuneConfig fields that are options of `finetune` (their help and defaults are there).
OPTIONS = ("method", "epochs", "lr", "batch_size", "rank", "seed", "targets", "dataset_dtype",
           "backend")
MODEL_MISSING = "flash a model first: skip2lora flash MODEL.s2lm"
FIXED_BACKENDS = ("thumb", "viper", "ulab", "python")  # the board's fixed-point kernels (int8 models)
EPOCH_SILENCE_S = 3600  # longest an epoch may run without a line before the board counts as lost


def register(subparsers):
    parser = subparsers.add_parser(
        "finetune", help="fine-tune the flashed model on the board",
        description="Upload a labelled dataset (.npz with arrays x, y; .csv with the label in "
                    "the last column; or .s2ld), then fine-tune the model on the board with "
                    "progress shown per epoch. Ctrl-C stops the board cleanly and keeps the "
                    "adapters of the last finished epoch. Give ':PATH' for a dataset already "
                    "on the board. With several --port every board trains at once, on the one "
                    "--data or on one --data per --port.")
    parser.add_argument("--data", required=True, action="append",
                        help="DATA.npz, DATA.csv, DATA.s2ld or :BOARD_PATH (once for every "
                             "board, or once per --port in the same order)")
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
        layers = sorted({int(part) for part in spec.split(",")})
    except ValueError:
        layers = [-1]
    if layers[0] < 0:
        raise UserError(f"--targets {spec!r} is not all, hidden or 0-based layer indexes like "
                        f"0,2")
    return layers


def check_options(args):
    """The options on their own, in the CLI's names, before the board is even opened: the
    board checks them too, but in its API's words (momentum, resume=False), and only after the
    data is uploaded."""
    if args.epochs < 1:
        raise UserError(f"--epochs {args.epochs}: give 1 or more (the total, with --resume "
                        f"counting the epochs already done)")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: give 1 or more samples per step")
    if args.rank is not None:
        if not 1 <= args.rank <= MAX_RANK:
            raise UserError(f"--rank {args.rank} is outside 1..{MAX_RANK}; leave it out for the "
                            f"model's own rank")
        if args.method == "ft-last":
            raise UserError("--rank does not apply to ft-last (it trains the last layer's "
                            "weights, no adapters); leave it out")
    if args.lr != LR_AUTO and not (args.lr > 0 and math.isfinite(args.lr)):
        raise UserError(f"--lr {args.lr:g} trains nothing; give a positive step size, e.g. "
                        f"{FinetuneConfig.lr}, or --lr auto")
    if args.targets is not None:
        if args.method not in SKIP_METHODS:
            trains = "every layer" if args.method == "lora-all" else "the last layer"
            raise UserError(f"--targets applies to {' and '.join(SKIP_METHODS)}; {args.method} "
                            f"trains {trains}, so leave it out")
        board_targets(args.targets)
    if args.backend in FIXED_BACKENDS and args.method not in SKIP_METHODS:
        raise UserError(f"--backend {args.backend}: {args.method} runs in float on the board; "
                        f"use --backend float or auto")


def check_against_model(args, model, model_name):
    """The options that depend on the flashed model, before anything is uploaded."""
    n_layers = len(model.layers)
    if args.targets is not None:
        layers = board_targets(args.targets)
        if layers == "hidden" and n_layers < 2:
            raise UserError(f"--targets hidden: {model_name} has one layer, so no hidden layer "
                            f"inputs; use --targets all")
        if isinstance(layers, list) and layers[-1] >= n_layers:
            raise UserError(f"--targets {args.targets}: {model_name} has layers 0..{n_layers - 1}")
    if args.backend in FIXED_BACKENDS and model.dtype != DTYPE_I8:
        raise UserError(f"--backend {args.backend} is the fixed-point path, which needs an int8 "
                        f"model and {model_name} has float weights; compile it with --dtype int8, "
                        f"or use --backend float or auto")


def batch_note(batch_size, n):
    """One line when --batch-size exceeds the samples: what the board then does."""
    if batch_size > n:
        return (f"note: --batch-size {batch_size} is more than the {n} samples: each epoch is one "
                f"batch of {n}, so one SGD step per epoch")
    return None


def lr_for_board(args, model, model_name, dataset=None, log=print):
    """The lr `skip2lora finetune` sends the board for its parsed options `args` and the
    flashed ModelFile: --lr as given, or with auto the choice (training/step_size.py) on
    `dataset`, the DatasetFile being uploaded, so it sees the samples as the board will. A
    dataset already on the board (--data :PATH) is not on the host, so auto gives the board's
    own default there, and says so."""
    if args.lr != LR_AUTO:
        return args.lr
    if args.data.startswith(":"):
        log(f"lr {FinetuneConfig.lr:g} (the board's default): --lr auto chooses on the host "
            f"from the data file, and {args.data[1:]} is on the board; give --lr to choose")
        return FinetuneConfig.lr
    targets = board_targets(args.targets) if args.targets else \
        [i for i in range(len(model.layers)) if model.adapter_mask >> i & 1] or "all"
    cfg = FinetuneConfig(method=args.method, rank=args.rank or model.rank,
                         batch_size=args.batch_size, seed=args.seed, targets=targets)
    bar = None
    if sys.stderr.isatty() and fleet.current() is None:
        from tqdm import tqdm

        bar = tqdm(total=len(LR_GRID), unit="lr", desc="choosing lr on the host", leave=False)
    try:
        choice = choose_lr(model.to_network(), dataset.float_features(), dataset.labels, cfg,
                           progress=None if bar is None else lambda done, total: bar.update(1))
    finally:
        if bar is not None:
            bar.close()
    log(choice.summary())
    return choice.lr


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
    if args.rank is not None:
        opts["rank"] = args.rank
    if args.targets:
        opts["targets"] = board_targets(args.targets)
    return opts


def describe_start(record):
    """The board's `S2L start=` record as the line finetune prints."""
    method, layers = record["start"], str(record["targets"])
    where = f"layer {layers}" if "," not in layers else f"layers {layers}"
    what = f"the last layer's weights ({where})" if method == "ft-last" else \
        f"rank {record['rank']} adapters on {where}"
    return (f"on the board: {method}, {record['backend']} backend, {what}, lr {record['lr']:.4g}, "
            f"{record['n']} samples")


def diverged_error(record, lr):
    """The one line for the board's `S2L diverged=` record."""
    loss = record["loss"]
    loss = "nan" if loss != loss else f"{loss:.4g}"
    kept = record["kept"]
    saved = (f"the adapters of epoch {kept} are kept in {BOARD_ADAPTERS}" if kept else
             "no adapters were kept")
    return UserError(f"training diverged in epoch {record['diverged']} (loss {loss}); {saved}; "
                     f"lower --lr (e.g. {lr / 10:g})")


def memory_error(record):
    """The one line for the board's `S2L error=memory` record, in the CLI's options."""
    return UserError(f"the model and dataset do not fit the board's heap (out of memory at the "
                     f"{record['need']} stage); {record['free']:,} bytes were free; compile an "
                     f"int8 model (--dtype int8), or use --targets hidden or a smaller --rank")


def resume_error(link, start, model):
    """--resume refused by the board (its restore): what the adapters on the board were trained
    with against what this run asks for, read from the board's file, in the CLI's options."""
    raw = link.read_file(BOARD_ADAPTERS)
    try:
        saved = read_adapters(raw, f"{BOARD_ADAPTERS} on the board")
    except UserError as exc:
        return UserError(f"--resume: {exc}; run without --resume to train afresh")
    theirs = f"{saved.method} rank {saved.rank} on layers " + \
        ",".join(str(a.layer) for a in saved.adapters)
    if saved.model_crc != model.file_crc:
        theirs += " for another model"
    mine = f"{start['start']} rank {start['rank']} on layers {start['targets']}" \
        if start else "another setup"
    return UserError(f"--resume: the adapters on the board are {theirs}; this run asks for "
                     f"{mine}; give the same --method, --rank and --targets, or run without "
                     f"--resume to train afresh")


class Progress:
    """Turns the board's `S2L ...` lines into a progress bar on a terminal, or into one plain
    line per epoch when the output goes to a log; other board output is printed as is."""

    def __init__(self, epochs, batch_size=1, batch_noted=False):
        self.epochs, self.batch_size, self.batch_noted = epochs, batch_size, batch_noted
        self.pending = b""
        self.records = []
        self.stopped = None  # the epoch whose adapters the board kept when it was stopped
        self.start = None  # what the board trains with (its `S2L start=` record)
        self.resumed = None
        self.diverged = None  # the `S2L diverged=` record
        self.error = None  # an `S2L error=` record (memory)
        self.bar = None
        self.worker = fleet.current()  # in a fleet: one bar per board, named by its port
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=epochs, unit="epoch", dynamic_ncols=True,
                            desc=self.worker.port if self.worker else "fine-tuning on the board",
                            position=self.worker.position if self.worker else None)

    def say(self, text):
        if self.bar is not None and self.worker is None:  # a fleet's lines go via its router
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
            # a fleet's table shows how far a board got, even one lost later
            fleet.record(epochs=record["epoch"], loss=record["loss"], accuracy=record["acc"])
            summary = f"loss {record['loss']:.4f}, train acc {100 * record['acc']:.1f} %, " \
                      f"{record['ms']} ms"
            if record.get("cache_built"):  # its cache reads are the records it just wrote
                summary += ", built the Skip-Cache"
            elif record.get("cache_reads"):
                summary += f", {record['cache_reads']} samples from the Skip-Cache"
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix_str(summary)
            else:
                self.say(f"  epoch {record['epoch']}/{self.epochs}: {summary}")
        elif "stopped" in record:
            self.stopped = int(record["stopped"])
        elif "start" in record:
            self.start = record
            self.say("  " + describe_start(record))
            note = batch_note(self.batch_size, record["n"])
            if note and not self.batch_noted:
                self.say(note)
                self.batch_noted = True
        elif "resume" in record:
            self.resumed = int(record["resume"])
            if self.bar is not None:
                self.bar.update(int(record["resume"]))
            self.say(f"  resuming after epoch {record['resume']} (adapters saved on the board)")
        elif "diverged" in record:
            self.diverged = record
        elif "error" in record:
            self.error = record

    def close(self):
        if self.bar is not None:
            self.bar.close()


def run(args):
    check_options(args)
    model_name = args.model or f"{BOARD_MODEL} on the board"
    model = None
    if args.model:
        model = read_model(args.model)
        check_against_model(args, model, model_name)
    if fleet.several(args.port):
        data = dict(zip(args.port, fleet.per_port(args.data, args.port, "--data")))

        def one(port):
            mine = argparse.Namespace(**vars(args))
            mine.port, mine.data = port, data[port]
            return finetune_board(mine, model, model_name)

        return fleet.run_fleet(args.port, one, "finetune")
    if len(args.data) > 1:
        raise UserError(f"--data is given {len(args.data)} times for one board: give it once, "
                        f"or give one --port per --data")
    args.port, args.data = fleet.single(args.port), args.data[0]
    return finetune_board(args, model, model_name)


def finetune_board(args, model, model_name):
    """Fine-tune one board (args.port, args.data one each); model: the --model read on the
    host, or None to read the board's. A fleet runs this once per board."""
    with BoardLink(args.port) as link:
        if args.model:
            on_board = link.file_sha256(BOARD_MODEL)
            if on_board != sha256(Path(args.model).read_bytes()):
                what = "holds no model" if on_board is None else \
                    f"holds another model (or a partial copy) at {BOARD_MODEL}"
                raise UserError(f"the board {what}, not {args.model}; run `skip2lora flash "
                                f"{args.model}` first", link.port)
        else:  # read back and checked whole (CRCs) before anything is uploaded or trained
            model = read_model(link.read_file(BOARD_MODEL, missing=MODEL_MISSING), model_name)
            check_against_model(args, model, model_name)
        noted, dataset = False, None
        if args.data.startswith(":"):
            data_path = args.data[1:]
            if link.file_sha256(data_path) is None:
                raise UserError(f"--data {args.data}: no such file on the board; give a local "
                                f"DATA.npz, .csv or .s2ld to upload, or check the path (`mpremote "
                                f"fs ls :{data_path.rsplit('/', 1)[0] or '/'}`)", link.port)
            print(f"dataset: {data_path} on the board")
        else:
            data, n = load_dataset_bytes(args.data, model, model_name, args.dataset_dtype)
            dataset = decode_dataset(data)
            note = batch_note(args.batch_size, n)
            if note:
                print(note)
                noted = True
            data_path = BOARD_DATASET
            if link.file_sha256(data_path) == sha256(data):
                print(f"dataset: {n} samples, unchanged on the board")
            else:
                print(f"dataset: uploading {n} samples ({len(data):,} bytes) to "
                      f"{data_path}")
                link.write_file(data_path, data)
        args.lr = lr_for_board(args, model, model_name, dataset)
        print(f"training {args.method} on the board: {args.epochs} epochs, lr {args.lr}, "
              f"batch {args.batch_size}, seed {args.seed}")
        progress = Progress(args.epochs, args.batch_size, noted)
        try:
            with fleet.interruptible(link):
                link.call("s2l.job.finetune", on_output=progress.feed, timeout=EPOCH_SILENCE_S,
                          **job_arguments(args, data_path))
        except BoardError as exc:
            progress.close()
            if progress.diverged is not None:
                raise diverged_error(progress.diverged, args.lr) from None
            if progress.error is not None and progress.error.get("error") == "memory":
                raise memory_error(progress.error) from None
            if args.resume and progress.resumed is None and f"{BOARD_ADAPTERS}: " in str(exc):
                # the board's restore refused its adapters file (errors name it "path: ...")
                raise resume_error(link, progress.start, model) from None
            raise
        except BoardInterrupted:
            progress.close()
            done = progress.stopped
            if done is None:
                done = progress.records[-1]["epoch"] if progress.records else 0
            if done:
                print(f"stopped on the board after epoch {done}; the adapters of epoch {done} "
                      f"are saved in {BOARD_ADAPTERS} (continue with --resume, fetch with "
                      f"`skip2lora pull`)")
            elif args.resume:
                print("stopped on the board before the first epoch finished; no adapters were "
                      "saved by this run")
            else:
                print("stopped on the board before the first epoch finished; no adapters were "
                      "saved, and the board holds none (a fresh run removes an earlier run's "
                      "when it starts)")
            return 130
        progress.close()
    if progress.records:
        last = progress.records[-1]
        total_ms = sum(r["ms"] for r in progress.records)
        fleet.record(epochs=last["epoch"], loss=last["loss"], accuracy=last["acc"],
                     board_s=total_ms / 1000)
        print(f"done: epoch {last['epoch']}, loss {last['loss']:.4f}, train accuracy "
              f"{100 * last['acc']:.1f} %, {total_ms / 1000:.1f} s on the board; adapters in "
              f"{BOARD_ADAPTERS} (fetch with `skip2lora pull`)")
    return 0
