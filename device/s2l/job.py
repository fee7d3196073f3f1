# The board's side of `skip2lora finetune` (host/skip2lora/commands/finetune.py): train a
# Trainer up to a total epoch count, save the adapters after every finished epoch, and report
# in one-line `S2L key=value` records for the host. Orchestration only: the loop is train.py's,
# the maths fixedpath.py's or floatpath.py's. A fresh run (resume=False) first removes the
# adapters (and .state) an earlier run left, so a run stopped or failed before its first save
# leaves none for `pull` or a resume to take as its own.
# The lines, in order:
#   S2L start=<method> backend= rank= targets= lr= n=   what the board trains with: the
#                                                host's backend names, targets as layer
#                                                indexes (0,1,2), n samples
#   S2L resume=<n>                               continuing from n epochs saved on flash
#   S2L epoch=<n> loss= acc= ms= cache_reads= saved_ms=[ cache_built=1]   after epoch n is on
#                                                flash (cache_built: this epoch built the cache)
#   S2L stopped=<n>                              Ctrl-C: flash holds epoch n; KeyboardInterrupt
#   S2L diverged=<n> loss=<f> kept=<k>           the divergence guard (guard.py) stopped epoch n
#                                                at once; flash holds epoch k's adapters
#                                                untouched (0: none); then S2LError (Diverged)
#   S2L error=memory need=<stage> free=<bytes>   then S2LError
#   S2L done=<n> adapters=<path>
import gc

from . import config
from .compat import S2LError, exists, remove
from . import kernels
from .formats import I8, read_adapters
from .model import Model
from .train import Trainer

TRAINER_BACKEND = {"auto": None, "python": "py"}  # the host's --backend names -> Trainer's
HOST_BACKEND = {"py": "python"}  # and back, for the start line


def _flash_full(e):
    """OSError 28 (ENOSPC), also when compat.open_write has turned it into an S2LError."""
    if isinstance(e, OSError):
        return bool(e.args) and e.args[0] == 28
    return "Errno 28" in str(e) or "ENOSPC" in str(e)


def _epochs_on_flash(path):
    try:
        return read_adapters(path)["epochs_done"]
    except Exception:
        return 0


def _kernels_first(model, method, backend):
    """Load the fixed path's kernels before the model's arrays split the heap: the viper
    module's machine code needs one long free run, which a loaded model leaves nowhere on a
    192 KiB Cortex-M0+ heap (a 512-64-64-3 int8 model then failed at the trainer stage with
    139 KB free; tools/budget_truth.py measures the need). Float models never load them."""
    if method not in config.SKIP_METHODS or backend == "float":
        return
    try:
        f = open(model, "rb")
    except OSError:
        return  # Model() says why
    try:
        head = f.read(10)  # the header's weight dtype is byte 9 (docs/formats.md)
    finally:
        f.close()
    ok = len(head) == 10 and head[9] == I8
    f = head = None
    if ok:
        gc.collect()  # the imports' garbage gone: the machine code packs into one place
        try:
            kernels.get(TRAINER_BACKEND.get(backend, backend))
        except ImportError:
            pass  # the Trainer reports it


def _layers(targets):
    return ",".join(str(i) for i in targets)


def finetune(model, data, adapters, cache=None, method=config.METHOD, epochs=config.EPOCHS,
             lr=config.LR, batch_size=config.BATCH_SIZE, seed=config.SEED, resume=False,
             backend=config.BACKEND, rank=None, momentum=config.MOMENTUM, targets=None):
    """Fine-tune to `epochs` epochs in total (with resume=True, counting those already in
    `adapters`); returns the epochs done. Errors are S2LError with a one-line message.
    Defaults are the host's (s2l.config); rank and targets None: the model's."""
    t = None
    shown = [0]  # the last epoch whose line was printed
    first = [0]  # the first epoch this run trains: the one that builds the cache, if any

    def mark(line, rec):
        if t.cache_built and rec["epoch"] == first[0]:  # its cache reads are the records it
            line += " cache_built=1"                    # has just written
        return line

    def log(line):
        try:
            print(mark(line, t.history[-1]))
        finally:  # a Ctrl-C right after the line must not print it twice
            shown[0] = t.history[-1]["epoch"]

    stage = "model"
    try:
        if not resume:  # a fresh run: no earlier run's adapters may pass for this one's
            remove(adapters + ".state")
            remove(adapters)
        _kernels_first(model, method, backend)
        m = Model(model)
        gc.collect()  # the model's loading garbage gone before the Trainer's buffers are placed
        stage = "trainer"
        t = Trainer(m, data, method=method, rank=rank, lr=lr, batch_size=batch_size,
                    momentum=momentum, seed=seed, backend=TRAINER_BACKEND.get(backend, backend),
                    cache=cache, targets=targets, log=log)
        print("S2L start=%s backend=%s rank=%d targets=%s lr=%.6g n=%d"
              % (method, HOST_BACKEND.get(t.backend, t.backend), t.rank, _layers(t.targets),
                 t.lr, t.n))
        if resume and exists(adapters):
            stage = "restore"
            shown[0] = t.restore(adapters)
            print("S2L resume=%d" % t.epochs_done)
            if not t.restored_exact:
                print("resuming from the float32 values in %s (no matching %s.state): not bit "
                      "for bit an uninterrupted run" % (adapters, adapters))
        elif resume:
            print("no adapters at %s yet: starting from epoch 0" % adapters)
        stage = "training"
        first[0] = t.epochs_done + 1
        if t.epochs_done >= epochs:
            print("%d epochs already done, %d asked for: nothing to train"
                  % (t.epochs_done, epochs))
        while t.epochs_done < epochs:
            t.fit(1, save=adapters)
            t.history = t.history[-1:]  # a long run must not grow the heap
    except KeyboardInterrupt:
        if stage == "training":
            done = t.saved_epochs
            if done > shown[0] and t.history:  # saved, but stopped before its line
                print(mark(t.progress_line(t.history[-1]), t.history[-1]))
        else:  # stopped while loading: flash holds what it held
            done = _epochs_on_flash(adapters) if resume else 0
        if t is not None:
            if t.cache_path:
                remove(t.cache_path + ".tmp")  # a cache build cut short
            t.close()
        print("S2L stopped=%d" % done)
        raise
    except MemoryError:
        m = t = None
        gc.collect()
        print("S2L error=memory need=%s free=%d" % (stage, gc.mem_free()))
        raise S2LError("the model and dataset do not fit the board's heap (out of memory at "
                       "the %s stage); use an int8 model, adapters on the hidden layers only "
                       "(targets='hidden') or a smaller rank" % stage)
    except (OSError, S2LError) as e:
        if hasattr(e, "kept"):  # guard.Diverged (guard.py is loaded only when a run diverges)
            t.close()
            print("S2L diverged=%d loss=%.6g kept=%d" % (e.epoch, e.loss, e.kept))
            raise
        if t is None or not _flash_full(e):
            raise
        path = adapters if t._prepared else t.cache_path
        remove(adapters + ".tmp")
        remove(adapters + ".state.tmp")
        t.close()
        if resume or t.saved_epochs:
            raise S2LError("flash full while writing %s; the previous adapters are intact; "
                           "free space on the board's flash (delete files you do not need) "
                           "and run again with --resume" % path)
        raise S2LError("flash full while writing %s, before this run saved any adapters; "
                       "free space on the board's flash (delete files you do not need) and "
                       "run again" % path)
    t.close()
    print("S2L done=%d adapters=%s" % (t.epochs_done, adapters))
    return t.epochs_done
