"""How much heap and flash fine-tuning a model needs on a board, counted before anything is flashed.

A model that does not fit fails on the board with a MemoryError after minutes of copying, or
part-way through the first epoch; this estimate turns that into a host-side refusal with the
figures. Everything is computed from the dims alone (no arrays), so compile and flash call
`estimate` cheaply.

RAM is what `skip2lora finetune` with the defaults needs (skip2lora, backend auto: the
fixed-point path with the default kernels (thumb on Cortex-M, viper elsewhere) for an int8
model, the float path for an f32 one, batch 1, int8 dataset, the Skip-Cache): the GC heap a fresh board must have for the job to complete.
It is counted the way the device package allocates (device/s2l/model.py, dataset.py, train.py,
fixedpath.py / floatpath.py, cache.py): every array is a GC block for the array object plus its
items rounded up to whole GC blocks (16 bytes on a 32-bit board, 32 on the 64-bit unix port);
the frozen weights are all in RAM, in row blocks of at most 2 KB. On top come the package's
code and the interpreter's own objects (CODE_BYTES) and what the heap loses between the weight
blocks (FRAGMENTATION, a share of them: a MemoryError comes from the lack of one free run, not
of bytes in total), both fitted to what tools/budget_truth.py measures on every virtual board
kind (docs/BUDGET.md): never below any measured need, at most 1.10 x it, and on the 192 KiB
firmware heap the same verdict as the firmware for every measured model. The estimate is this
close because the package keeps the heap in few pieces (device/s2l/__init__.py loads its
modules with a collection after each; no garbage is left between weight blocks);
tests/test_budget_truth.py holds it to the measurements.
"""
from dataclasses import dataclass

from skip2lora.board.deploy import THUMB_ARCHS
from skip2lora.model.formats import pad4

# Fine-tuning samples the budget assumes when it is not told (compile's and flash's --samples):
# the README's flow fine-tunes on the noisy room's first recording, 533 spectra.
DEFAULT_SAMPLES = 533
DEFAULT_SAMPLES_WHY = "the README's cooling-fan flow; give your dataset's size"
MODEL_BLOCK_BYTES = 2048  # device/s2l/model.py BLOCK: weights are held in row blocks this size
PAYLOAD_CHUNK = 64  # fixedpath.py: payload() converts 64 values at a time
MASTER_ROW_ITEMS = 512  # fixedpath.py: an adapter's master rows in blocks of up to 512 items

# The device package's code and the interpreter's own objects in the GC heap while the job
# runs, per mpy arch (the .mpy bytecode, and on bare-metal ports the viper machine code too,
# live in the heap) and per path ("fixed": int8 model, thumb or viper kernels; "float": floatpath.py),
# and the heap lost between the weight blocks (a share of weights_ram): fitted by
# tools/budget_truth.py --fit to what it measures on every virtual board kind
# (docs/BUDGET.json): never below a measured need, at most 1.10 x it. Arches never measured
# take the largest 32-bit figures.
CODE_BYTES = {
    ('armv6m', 'fixed'): 75509,
    ('armv7emsp', 'fixed'): 74328,
    ('armv6m', 'float'): 61388,
    ('armv7emsp', 'float'): 61004,
    ('x64', 'fixed'): 96849,
    ('x64', 'float'): 95436,
}
FRAGMENTATION = {
    ('armv6m', 'fixed'): 0.1483,
    ('armv7emsp', 'fixed'): 0.1483,
    ('armv6m', 'float'): 0.1293,
    ('armv7emsp', 'float'): 0.1293,
    ('x64', 'fixed'): 0.0707,
    ('x64', 'float'): 0.0385,
}
WEIGHTS_IN_RAM_SHARE = 1.0  # the board loads every layer (model.py): nothing is streamed

_ITEMSIZE = {"f32": 4, "int8": 1}


def layer_payload_bytes(d_in, d_out, dtype):
    """Bytes of one layer's arrays as the model file stores them (docs/formats.md)."""
    if dtype == "int8":
        return 4 * d_out + pad4(d_out * d_in) + 4 * d_out  # scale, codes, bias
    return 4 * d_out * d_in + 4 * d_out  # weight, bias


def model_file_bytes(dims, dtype):
    header = pad4(24 + 2 * len(dims)) + 4
    blocks = sum(8 + layer_payload_bytes(dims[i], dims[i + 1], dtype) for i in range(len(dims) - 1))
    return header + blocks + 4


def dataset_file_bytes(n_features, samples, dtype):
    return 24 + samples * (n_features * _ITEMSIZE[dtype] + 1) + 4


def cache_record_bytes(dims):
    """x_2 ... x_L as int8 and z as f32, each segment padded to 4 bytes (docs/formats.md)."""
    return sum(pad4(d) for d in dims[1:-1]) + pad4(4 * dims[-1])


def cache_file_bytes(dims, samples):
    n_segments = len(dims) - 1
    return pad4(24 + 8 * n_segments) + 4 + samples * (cache_record_bytes(dims) + 4)


def adapter_values(dims, rank, mask):
    classes = dims[-1]
    return sum(rank * dims[i] + classes * rank for i in range(len(dims) - 1) if mask >> i & 1)


def adapter_file_bytes(dims, rank, mask):
    count = bin(mask).count("1")
    return pad4(28 + 12 * count) + 4 + 4 * adapter_values(dims, rank, mask) + 4


def kib(n):
    return f"{n / 1024:.1f} KiB"


def _verdict(good):
    return "fits" if good else "DOES NOT FIT"


@dataclass
class Budget:
    board: object
    dims: list
    dtype: str
    samples: int
    path: str  # the board's arithmetic for this model: "fixed" (int8, viper) or "float"
    weights_bytes: int  # all frozen weights as the model file stores them
    weights_ram: int  # the same in RAM: row-block arrays, scales, biases
    activations: int  # per-layer buffers of the model and of the path
    adapters: int  # masters (and the fixed path's int16 copies)
    gradients: int  # the float path's gradient accumulators (the fixed path keeps none)
    io_buffers: int  # labels and shuffle order (3 bytes a sample), dataset and cache buffers
    overhead: int  # device package code and interpreter objects (measured, CODE_BYTES)
    fragmentation: int  # heap lost between the weight blocks (measured share, FRAGMENTATION)
    model_file: int
    dataset_file: int
    cache_file: int
    adapter_files: int  # twice the file: the new one is written before the old is replaced

    weights_in_ram = True  # the board loads every layer (device/s2l/model.py)

    @property
    def ram_total(self):
        return (self.weights_ram + self.activations + self.adapters + self.gradients
                + self.io_buffers + self.overhead + self.fragmentation)

    @property
    def flash_total(self):
        return self.model_file + self.dataset_file + self.cache_file + self.adapter_files

    @property
    def fits_ram(self):
        return self.ram_total <= self.board.heap_bytes

    @property
    def fits_flash(self):
        return self.flash_total <= self.board.fs_bytes

    @property
    def fits(self):
        return self.fits_ram and self.fits_flash

    @property
    def path_name(self):
        if self.path == "float":
            return "float"
        return "fixed point, " + ("thumb" if self.board.mpy_arch in THUMB_ARCHS else "viper")

    def lines(self, board_line=True):
        """The breakdown compile and flash print (flash, having printed the connected board's
        facts already, leaves out the first line)."""
        b = self.board
        ok = _verdict
        head = [f"board {b.name} ({b.description}): heap {kib(b.heap_bytes)}, "
                f"filesystem {kib(b.fs_bytes)}"] if board_line else []
        return head + [
            f"  RAM   {kib(self.ram_total)} of {kib(b.heap_bytes)}: {ok(self.fits_ram)} "
            f"(fine-tuning with the defaults: {self.path_name}, {self.samples} samples)",
            f"    weights {kib(self.weights_ram)} ({self.dtype}, kept in RAM), activations "
            f"{kib(self.activations)}, adapters {kib(self.adapters)}, gradients "
            f"{kib(self.gradients)}, samples and I/O {kib(self.io_buffers)}",
            f"    device code and interpreter {kib(self.overhead)}, fragmentation "
            f"{kib(self.fragmentation)} (measured on the virtual boards, docs/BUDGET.md)",
            f"  flash {kib(self.flash_total)} of {kib(b.fs_bytes)}: {ok(self.fits_flash)}",
            f"    model {kib(self.model_file)}, dataset {kib(self.dataset_file)} and cache "
            f"{kib(self.cache_file)} for {self.samples} samples (--samples N for your "
            f"dataset's size), adapters {kib(self.adapter_files)}",
        ]

    def refusal(self):
        """One line: both totals against both budgets, and what to change."""
        b = self.board
        return (f"the {'-'.join(map(str, self.dims))} {self.dtype} model does not fit "
                f"{b.name}: RAM {kib(self.ram_total)} needed of {kib(b.heap_bytes)} heap "
                f"(weights {kib(self.weights_ram)}), flash {kib(self.flash_total)} needed of "
                f"{kib(b.fs_bytes)} for {self.samples} samples; try "
                + ("" if self.dtype == "int8" else "--dtype int8, ")
                + "--targets hidden, a smaller --rank or --samples, another --board, or --force")


class _Heap:
    """Bytes of GC-heap allocations on a board with this word size."""

    def __init__(self, word_bits):
        self.word = word_bits // 8
        self.block = 4 * self.word  # MICROPY_BYTES_PER_GC_BLOCK

    def blocks(self, nbytes):
        return -(-max(nbytes, 1) // self.block) * self.block

    def array(self, nbytes):
        """array('x', ...) or bytearray: the object, then its items."""
        return self.block + self.blocks(nbytes)

    def list(self, n):
        return self.block + self.blocks(n * self.word)

    def tuple(self, n):
        return self.blocks((2 + n) * self.word)


def _weights_ram(h, dims, dtype):
    item = _ITEMSIZE[dtype]
    total = 0
    for i in range(len(dims) - 1):
        d_in, d_out = dims[i], dims[i + 1]
        per = max(1, MODEL_BLOCK_BYTES // (d_in * item))
        n_blocks = -(-d_out // per)
        for k in range(n_blocks):
            rows = min(per, d_out - k * per)
            total += h.array(rows * d_in * item) + h.tuple(3)
        total += h.list(n_blocks) + h.array(4 * d_out)  # W list, bias
        if dtype == "int8":
            total += h.array(4 * d_out)  # per-row scale
    return total


def _fixed_ram(h, dims, targets, rank, row_kernels):
    """fixedpath.FixedPath's buffers and adapters (and the model's float xs). row_kernels: the
    backend takes an adapter's rows in one call (thumb); otherwise (viper) the rows are also
    listed, short ones as views into their blocks."""
    L, C = len(dims) - 1, dims[-1]
    act = sum(h.array(4 * d) for d in dims) + h.array(4 * max(dims))  # model xs, _tmp
    act += sum(h.array(pad4(d)) for d in dims[:L]) + h.array(4 * max(dims[1:]))  # xq, v32
    act += 4 * h.array(4 * C) + 2 * h.array(2 * C) + h.array(4 * PAYLOAD_CHUNK)
    act += sum(2 * h.array(4 * d) + h.array(d) for d in dims[1:])  # dM, dB, dN
    ads = 0
    for i in targets:
        d = dims[i]
        per = max(1, min(rank, MASTER_ROW_ITEMS // d))  # rows per block of masters
        for q in range(0, rank, per):
            n = d * min(per, rank - q)
            ads += h.array(4 * n) + h.array(2 * n)  # int32 masters, int16 copies
        ads += 2 * h.list(-(-rank // per))
        if not row_kernels:
            ads += 2 * h.list(rank) + (2 * rank * h.block if per > 1 else 0)
        ads += h.array(4 * C * rank) + h.array(2 * C * rank) + h.array(2 * rank) + h.array(4 * rank)
    return act, ads, 0


def _float_ram(h, dims, targets, rank):
    """floatpath.FloatPath's buffers, adapters and gradient accumulators (and the model's xs)."""
    C = dims[-1]
    act = 2 * (sum(h.array(4 * d) for d in dims)) + h.array(4 * max(dims))  # model's, path's xs
    act += 2 * h.array(4 * C) + 3 * h.array(4 * max(dims))  # y, g, tmp, delta, delta2
    ads = grads = 0
    for i in targets:
        d = dims[i]
        ads += rank * h.array(4 * d) + h.list(rank) + h.array(4 * C * rank)
        ads += h.array(4 * rank) + h.array(4 * max(rank, C))
        grads += rank * h.array(4 * d) + h.list(rank) + h.array(4 * C * rank)
    return act, ads, grads


def code_key(board, path):
    key = (board.mpy_arch, path)
    if key in CODE_BYTES:
        return key
    return max((k for k in CODE_BYTES if k[0] != "x64" and k[1] == path),
               key=lambda k: (CODE_BYTES[k], FRAGMENTATION[k]))


def estimate(dims, board, dtype="f32", rank=4, mask=None, samples=DEFAULT_SAMPLES,
             dataset_dtype="int8", batch_size=1):
    """RAM and flash needed to fine-tune a model of these dims on `board` with the defaults of
    `skip2lora finetune` (skip2lora, backend auto).

    `mask` is the adapter mask (bit i: adapter on layer i's input), all layers when None.
    `dataset_dtype` is how the fine-tuning samples are packed on the board; `batch_size` does
    not change the heap (the fixed path steps per sample, the float path's accumulators exist
    for any batch).
    """
    dims = [int(d) for d in dims]
    n_layers = len(dims) - 1
    mask = (1 << n_layers) - 1 if mask is None else mask
    targets = [i for i in range(n_layers) if mask >> i & 1]
    h = _Heap(board.word_bits)
    path = "fixed" if dtype == "int8" else "float"
    weights = sum(layer_payload_bytes(dims[i], dims[i + 1], dtype) for i in range(n_layers))
    weights_ram = _weights_ram(h, dims, dtype)
    if path == "fixed":
        act, ads, grads = _fixed_ram(h, dims, targets, rank, board.mpy_arch in THUMB_ARCHS)
    else:
        act, ads, grads = _float_ram(h, dims, targets, rank)
    item = _ITEMSIZE[dataset_dtype]
    io = h.array(samples) + h.array(2 * samples)  # labels, shuffle order
    io += h.array(dims[0] * item) + h.array(pad4(dims[0]))  # dataset record, cache x1 view
    key = code_key(board, path)
    return Budget(
        board=board, dims=dims, dtype=dtype, samples=samples, path=path,
        weights_bytes=weights, weights_ram=weights_ram, activations=act, adapters=ads,
        gradients=grads, io_buffers=io, overhead=CODE_BYTES[key],
        fragmentation=int(FRAGMENTATION[key] * weights_ram + 0.5),
        model_file=model_file_bytes(dims, dtype),
        dataset_file=dataset_file_bytes(dims[0], samples, dataset_dtype),
        cache_file=cache_file_bytes(dims, samples),
        adapter_files=2 * adapter_file_bytes(dims, rank, mask),
    )
