"""How much heap and flash fine-tuning a model needs on a board, counted before anything is flashed.

A model that does not fit fails on the board with a MemoryError after minutes of copying, or
worse, part-way through the first epoch; this estimate turns that into a host-side refusal
with the figures. Everything is computed from the dims alone (no arrays), so every command
(compile now; flash, finetune and bench later) can call `estimate` cheaply.

What the board is assumed to hold, per docs/compiler.md:
- frozen weights: in RAM when they take at most half the heap, else streamed from the model
  file one layer block at a time (the largest block is then what RAM holds). With the
  Skip-Cache the frozen forward pass runs only in the first epoch, so streaming costs little;
- activations x_1 ... x_L and z as 4-byte values, plus u_i (r per adapter) and p, g (C each);
- adapters: 4-byte masters plus the 2-byte forward copies of the fixed-point recipe, a 4-byte
  gradient accumulator and 4-byte momentum per adapter value;
- one dataset record, one cache record and a file read block;
- a fixed allowance for the device package code and interpreter state.
"""
from dataclasses import dataclass

from skip2lora.model.formats import pad4

# Device package bytecode, its module globals and interpreter state after import: an estimate
# (the device issue measures the real figure with gc.mem_free() before/after import).
DEVICE_OVERHEAD_BYTES = 30 * 1024
# Chunk the board reads files in (CRC checks, streamed layer blocks): the device reader's choice.
FILE_BLOCK_BYTES = 512
# int32 (or f32) master + int16 forward copy of the fixed-point recipe in DESIGN.md.
ADAPTER_BYTES_PER_VALUE = 6
GRADIENT_BYTES_PER_VALUE = 4
MOMENTUM_BYTES_PER_VALUE = 4
ACTIVATION_BYTES = 4
DEFAULT_SAMPLES = 705  # one drift scenario's fine-tuning half of the cooling-fan data
WEIGHTS_IN_RAM_SHARE = 0.5  # weights stay in RAM if they take at most this share of the heap

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
    weights_bytes: int  # all frozen weights
    weights_in_ram: bool
    weights_ram: int  # what RAM holds of them: all, or the largest layer when streamed
    activations: int
    adapters: int
    gradients: int
    momentum: int
    io_buffers: int
    overhead: int
    model_file: int
    dataset_file: int
    cache_file: int
    adapter_files: int  # twice the file: the new one is written before the old is replaced

    @property
    def ram_total(self):
        return (self.weights_ram + self.activations + self.adapters + self.gradients
                + self.momentum + self.io_buffers + self.overhead)

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
    def weights_mode(self):
        return "kept in RAM" if self.weights_in_ram else "streamed from flash layer by layer"

    def lines(self):
        """The breakdown compile prints."""
        b = self.board
        ok = _verdict
        return [
            f"board {b.name} ({b.description}): heap {kib(b.heap_bytes)}, "
            f"filesystem {kib(b.fs_bytes)}",
            f"  RAM   {kib(self.ram_total)} of {kib(b.heap_bytes)}: {ok(self.fits_ram)}",
            f"    weights {kib(self.weights_ram)} ({self.dtype}, {self.weights_mode}; "
            f"all layers {kib(self.weights_bytes)})",
            f"    activations {kib(self.activations)}, adapters {kib(self.adapters)}, "
            f"gradients {kib(self.gradients)}, momentum {kib(self.momentum)}",
            f"    I/O buffers {kib(self.io_buffers)}, device code and interpreter "
            f"{kib(self.overhead)} (estimate)",
            f"  flash {kib(self.flash_total)} of {kib(b.fs_bytes)}: {ok(self.fits_flash)}",
            f"    model {kib(self.model_file)}, dataset {kib(self.dataset_file)} and cache "
            f"{kib(self.cache_file)} for {self.samples} samples, adapters "
            f"{kib(self.adapter_files)}",
        ]

    def refusal(self):
        """One line: both totals against both budgets, and what to change."""
        b = self.board
        return (f"the {'-'.join(map(str, self.dims))} {self.dtype} model does not fit "
                f"{b.name}: RAM {kib(self.ram_total)} needed of {kib(b.heap_bytes)} heap "
                f"(weights {self.weights_mode} {kib(self.weights_ram)}), flash "
                f"{kib(self.flash_total)} needed of {kib(b.fs_bytes)}; try --dtype int8, "
                f"--targets hidden, a smaller --rank or --samples, another --board, or --force")


def estimate(dims, board, dtype="f32", rank=4, mask=None, samples=DEFAULT_SAMPLES,
             dataset_dtype="int8"):
    """RAM and flash needed to fine-tune a model of these dims on `board`.

    `mask` is the adapter mask (bit i: adapter on layer i's input), all layers when None.
    `dataset_dtype` is how the fine-tuning samples are packed on the board.
    """
    dims = [int(d) for d in dims]
    n_layers = len(dims) - 1
    mask = (1 << n_layers) - 1 if mask is None else mask
    classes = dims[-1]
    payloads = [layer_payload_bytes(dims[i], dims[i + 1], dtype) for i in range(n_layers)]
    weights = sum(payloads)
    in_ram = weights <= WEIGHTS_IN_RAM_SHARE * board.heap_bytes
    values = adapter_values(dims, rank, mask)
    n_adapters = bin(mask).count("1")
    dataset_record = dims[0] * _ITEMSIZE[dataset_dtype] + 1
    return Budget(
        board=board, dims=dims, dtype=dtype, samples=samples,
        weights_bytes=weights, weights_in_ram=in_ram,
        weights_ram=weights if in_ram else max(payloads),
        activations=ACTIVATION_BYTES * (sum(dims) + n_adapters * rank + 2 * classes),
        adapters=ADAPTER_BYTES_PER_VALUE * values,
        gradients=GRADIENT_BYTES_PER_VALUE * values,
        momentum=MOMENTUM_BYTES_PER_VALUE * values,
        io_buffers=dataset_record + cache_record_bytes(dims) + 4 + FILE_BLOCK_BYTES,
        overhead=DEVICE_OVERHEAD_BYTES,
        model_file=model_file_bytes(dims, dtype),
        dataset_file=dataset_file_bytes(dims[0], samples, dataset_dtype),
        cache_file=cache_file_bytes(dims, samples),
        adapter_files=2 * adapter_file_bytes(dims, rank, mask),
    )
