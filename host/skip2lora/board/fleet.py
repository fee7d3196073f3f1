"""One command, many boards: a worker thread per board, each board's lines named by its port,
and one summary table at the end.

A board command given `--port` more than once (flash, finetune, pull, board status) hands one
function per board to run_fleet(). The boards work at once (each waits on its own serial
port, so threads are enough), a board that fails or disconnects ends only its own worker,
and its reason is kept for the summary. What a worker prints goes through a router that puts
the board's name in front of every line, so the single-board code prints the same words in a
fleet as alone; on a terminal each board also gets its own progress bar (see current()).
"""
import sys
import threading
import time
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from skip2lora.board.link import BoardInterrupted
from skip2lora.errors import UserError

_local = threading.local()  # .worker: the Worker of the board this thread serves
_stopping = threading.Event()  # set by Ctrl-C on the host: no board starts a job after it


@dataclass
class Worker:
    """One board of a fleet: what it is called, and what it did (the summary's row)."""
    port: str
    position: int
    ok: bool = False
    reason: str = "did not run"
    epochs: object = None
    loss: object = None
    accuracy: object = None
    board_s: object = None
    training: list = field(default_factory=list)  # those running a job Ctrl-C may stop


def several(ports):
    """True when --port was given more than once."""
    return ports is not None and len(ports) > 1


def single(ports):
    """The one port of a single-board run (None: the running virtual board's)."""
    return ports[0] if ports else None


def current():
    """The Worker this thread serves, or None outside a fleet (single-board runs)."""
    return getattr(_local, "worker", None)


@contextmanager
def interruptible(link):
    """Around a long job on the board (fine-tuning): Ctrl-C on the host sends Ctrl-C to the
    board while it runs, never in the middle of a file transfer, which it would cut in two
    and leave the raw REPL out of step. After Ctrl-C no job starts: BoardInterrupted."""
    worker = current()
    if worker is None:
        yield link
        return
    worker.training.append(link)
    try:
        if _stopping.is_set():
            raise BoardInterrupted()
        yield link
    finally:
        worker.training.remove(link)


def record(**figures):
    """Set this board's summary figures (epochs, loss, accuracy, board_s) from its worker."""
    worker = current()
    if worker is not None:
        for name, value in figures.items():
            setattr(worker, name, value)


def per_port(values, ports, option):
    """An option given once for every board or once per --port, as one value per port."""
    if len(values) == 1:
        return values * len(ports)
    if len(values) == len(ports):
        return list(values)
    raise UserError(f"{option} given {len(values)} times for {len(ports)} --port: give it once "
                    f"for every board, or once per --port in the same order")


class _Router:
    """sys.stdout during a fleet run: a worker's lines come out whole, after its board's name;
    the main thread's pass through. On a terminal the lines go above the progress bars."""

    def __init__(self, stream, bars):
        self.stream, self.bars = stream, bars
        self.lock = threading.Lock()
        self.pending = {}

    def write(self, text):
        worker = current()
        if worker is None:
            return self.stream.write(text)
        buffered = self.pending.get(worker.port, "") + text
        *lines, self.pending[worker.port] = buffered.split("\n")
        for line in lines:
            self.emit(f"{worker.port}: {line.strip()}")
        return len(text)

    def emit(self, line):
        with self.lock:
            if self.bars:
                from tqdm import tqdm

                tqdm.write(line, file=self.stream)
            else:
                self.stream.write(line + "\n")
            self.stream.flush()

    def flush(self):
        self.stream.flush()

    def isatty(self):
        return self.stream.isatty()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _work(worker, job):
    _local.worker = worker
    try:
        status = job(worker.port)
        worker.ok = not status
        worker.reason = "ok" if worker.ok else "interrupted" if status == 130 else \
            f"stopped (exit status {status})"
    except BoardInterrupted:
        worker.reason = "interrupted"
    except UserError as exc:  # its message may start with the port, which the row names
        worker.reason = " ".join(str(exc).split()).removeprefix(f"{worker.port}: ")
    except Exception as exc:  # noqa: BLE001 - one board's bug must not take the others down
        worker.reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    finally:
        pending = sys.stdout.pending.pop(worker.port, "") if isinstance(sys.stdout, _Router) \
            else ""
        if pending.strip():
            sys.stdout.emit(f"{worker.port}: {pending.strip()}")
        _local.worker = None
    return worker


def _interrupt(workers):
    """Ctrl-C on the host: Ctrl-C to every board running a job, so each stops cleanly and keeps
    what it saved; a board in a transfer finishes it and starts no job (interruptible())."""
    _stopping.set()
    for worker in workers:
        for link in list(worker.training):
            try:
                link.transport.serial.write(b"\x03")
            except Exception:  # noqa: BLE001 - the link may be gone already
                pass


def run_fleet(ports, job, what):
    """Run job(port) -> exit status on every port at once; print the summary; return 0 if every
    board succeeded, else raise the UserError that names each failed board and its reason."""
    if len(set(ports)) != len(ports):
        twice = sorted({p for p in ports if ports.count(p) > 1})
        raise UserError(f"--port {twice[0]} is given twice: give each board once")
    workers = [Worker(port, i) for i, port in enumerate(ports)]
    bars = sys.stderr.isatty()
    real = sys.stdout
    sys.stdout = _Router(real, bars)
    began = time.monotonic()
    interrupted = False
    _stopping.clear()
    try:
        print(f"{what} on {len(ports)} boards at once: {', '.join(ports)}")
        with ThreadPoolExecutor(max_workers=len(ports), thread_name_prefix="board") as pool:
            futures = [pool.submit(_work, w, job) for w in workers]
            try:
                for f in futures:
                    while not f.done():
                        time.sleep(0.05)
            except KeyboardInterrupt:  # each board stops cleanly; the table still says how far
                interrupted = True
                _interrupt(workers)
    finally:
        sys.stdout = real
    print()
    for line in summary_lines(workers):
        print(line)
    if interrupted:
        raise KeyboardInterrupt
    failed = [w for w in workers if not w.ok]
    print(f"{len(workers) - len(failed)} of {len(workers)} boards succeeded "
          f"({time.monotonic() - began:.1f} s)")
    if failed:
        raise UserError(f"{len(failed)} of {len(workers)} boards failed: " +
                        "; ".join(f"{w.port} ({w.reason})" for w in failed))
    return 0


def _cell(value, form):
    return "-" if value is None else form.format(value)


def summary_lines(workers):
    """The table: board, result, epochs, loss, accuracy, board seconds; the result (with a
    failed board's reason) is the last column, so a long reason does not push the figures."""
    rows = [("board", "epochs", "loss", "accuracy", "board s", "result")]
    for w in workers:
        rows.append((w.port, _cell(w.epochs, "{}"), _cell(w.loss, "{:.4f}"),
                     _cell(None if w.accuracy is None else 100 * w.accuracy, "{:.1f} %"), _cell(w.board_s, "{:.1f}"),
                     "ok" if w.ok else f"FAILED: {w.reason}"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return ["  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5] for r in rows]
