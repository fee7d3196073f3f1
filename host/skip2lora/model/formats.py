"""Host reader/writer of every file that crosses to the board (spec: docs/formats.md).

One module so the four formats share one header/CRC discipline; the board has its own
reader in device/ and both must agree on the fixtures in tests/fixtures/. Every problem with
a file becomes a UserError naming the file, so the CLI prints one line instead of a traceback.
"""
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from skip2lora.config import KIND_DELTA, KIND_PARALLEL, KIND_SKIP, METHODS
from skip2lora.errors import UserError
from skip2lora.model.network import Dense, Network

VERSION = 1
MODEL_MAGIC, DATASET_MAGIC, CACHE_MAGIC, ADAPTER_MAGIC = b"S2LM", b"S2LD", b"S2LC", b"S2LA"
DTYPE_F32, DTYPE_I8, DTYPE_I16, DTYPE_I32 = 0, 1, 2, 3
NUMPY_DTYPES = {DTYPE_F32: "<f4", DTYPE_I8: "i1", DTYPE_I16: "<i2", DTYPE_I32: "<i4"}
DTYPE_NAMES = {"f32": DTYPE_F32, "int8": DTYPE_I8, "int16": DTYPE_I16, "int32": DTYPE_I32}
METHOD_CODES = {name: code for code, name in enumerate(METHODS)}  # the .s2la method byte
MAX_DIM, MAX_CLASSES, MAX_LAYERS, MAX_RANK = 4096, 255, 16, 64
_PREFIX = struct.Struct("<4sHH")


def crc32(data, value=0):
    return zlib.crc32(data, value) & 0xFFFFFFFF


def pad4(n):
    return (n + 3) & ~3


def _seal_header(body):
    """Pad the header body to leave room for its CRC on a 4-byte boundary, fill header_len, add the CRC."""
    header_len = pad4(len(body)) + 4
    body = body + bytes(header_len - 4 - len(body))
    body = body[:6] + struct.pack("<H", header_len) + body[8:]
    return body + struct.pack("<I", crc32(body))


def _write_sealed(path, obj, encode):
    """Encode obj, write it atomically and record the file CRC it now has (its last 4 bytes)."""
    data = encode(obj)
    write_atomic(path, data)
    obj.file_crc = struct.unpack("<I", data[-4:])[0]
    return data


def _with_trailer(data):
    return data + struct.pack("<I", crc32(data))


class _Reader:
    """Bounds-checked view of a file's bytes that turns every short read into a UserError."""

    def __init__(self, data, path, what):
        self.data, self.path, self.what, self.pos = data, path, what, 0

    def fail(self, message):
        raise UserError(f"{message}; the {self.what} file is corrupt or not a {self.what} file: "
                        f"rebuild it", self.path)

    def take(self, n):
        if self.pos + n > len(self.data):
            self.fail(f"truncated at byte {len(self.data)} (needed {self.pos + n})")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def array(self, dtype_code, count, shape=None):
        dt = np.dtype(NUMPY_DTYPES[dtype_code])
        arr = np.frombuffer(self.take(dt.itemsize * count), dtype=dt).copy()
        return arr.reshape(shape) if shape else arr

    def header(self, magic):
        """Check magic, version and header CRC before any field is trusted; return header_len."""
        if len(self.data) < 12:
            self.fail(f"too short for a header ({len(self.data)} bytes)")
        found, version, header_len = _PREFIX.unpack_from(self.data, 0)
        if found != magic:
            self.fail(f"bad magic {found!r}, expected {magic!r}")
        if version != VERSION:
            raise UserError(f"format version {version} is not supported (this tool reads version "
                            f"{VERSION}); recompile or repack it with this version of skip2lora",
                            self.path)
        if header_len < 12 or header_len % 4 or header_len > len(self.data):
            self.fail(f"bad header length {header_len}")
        (stored,) = struct.unpack_from("<I", self.data, header_len - 4)
        if crc32(self.data[:header_len - 4]) != stored:
            self.fail("header CRC mismatch")
        self.pos = _PREFIX.size
        return header_len

    def trailer(self):
        """Check the whole-file CRC32 trailer; return the stored value."""
        if len(self.data) < 4:
            self.fail("too short")
        (stored,) = struct.unpack_from("<I", self.data, len(self.data) - 4)
        if crc32(self.data[:-4]) != stored:
            self.fail("file CRC mismatch")
        return stored

    def check_dim(self, name, value, low=1, high=MAX_DIM):
        if not low <= value <= high:
            self.fail(f"{name} = {value} is outside {low}..{high}")
        return value

    def check_finite(self, name, arr):
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            self.fail(f"{name} holds NaN or Inf")


def _read_bytes(source, name=None):
    """(data, how messages name it): a path, or bytes named by `name` (e.g. a board file)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), name or "<bytes>"
    try:
        with open(source, "rb") as f:
            return f.read(), str(source)
    except FileNotFoundError:
        raise UserError("no such file; check the path", source) from None
    except IsADirectoryError:
        raise UserError("is a directory, expected a file", source) from None
    except OSError as exc:  # permission denied, I/O error
        raise UserError(f"cannot read it ({exc.strerror or exc})", source) from None


def write_atomic(path, data):
    """Write to a temporary name then rename, so a crash never leaves a half-written file."""
    import os

    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # disk full, Ctrl-C: leave the old file and no debris
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---------------------------------------------------------------- compiled model

@dataclass
class ModelLayer:
    """One layer block as stored: weight is f32 (out, in), or int8 with a per-row scale."""

    weight: np.ndarray
    bias: np.ndarray
    scale: np.ndarray = None  # per output channel, int8 only
    relu: bool = True

    @property
    def dtype(self):
        return DTYPE_I8 if self.scale is not None else DTYPE_F32

    def dequantized(self):
        w = self.weight.astype(np.float32)
        return w * self.scale[:, None].astype(np.float32) if self.scale is not None else w


@dataclass
class ModelFile:
    layers: list
    rank: int = 4
    alpha: float = 4.0
    adapter_mask: int = 0
    file_crc: int = 0

    @property
    def dims(self):
        return [l.weight.shape[1] for l in self.layers] + [self.layers[-1].weight.shape[0]]

    @property
    def dtype(self):
        return self.layers[0].dtype

    def to_network(self):
        return Network([Dense(l.dequantized(), l.bias.astype(np.float32), name=f"layer{i}")
                        for i, l in enumerate(self.layers)])


def encode_model(model):
    layers = model.layers
    dims = model.dims
    mask = model.adapter_mask or (1 << len(layers)) - 1
    body = _PREFIX.pack(MODEL_MAGIC, VERSION, 0) + struct.pack(
        "<BBHfII", len(layers), layers[0].dtype, model.rank, model.alpha, mask, 0)
    body += struct.pack(f"<{len(dims)}H", *dims)
    parts = [_seal_header(body)]
    for i, layer in enumerate(layers):
        d_out, d_in = layer.weight.shape
        relu = i < len(layers) - 1
        parts.append(struct.pack("<HHBBH", d_in, d_out, layer.dtype, int(relu), 0))
        if layer.scale is not None:
            parts.append(np.asarray(layer.scale, "<f4").tobytes())
            q = np.asarray(layer.weight, "i1").tobytes()
            parts.append(q + bytes(pad4(len(q)) - len(q)))
        else:
            parts.append(np.asarray(layer.weight, "<f4").tobytes())
        parts.append(np.asarray(layer.bias, "<f4").tobytes())
    return _with_trailer(b"".join(parts))


def decode_model(source, name=None):
    data, path = _read_bytes(source, name)
    r = _Reader(data, path, "model")
    header_len = r.header(MODEL_MAGIC)
    n_layers, dtype, rank, alpha, mask, _ = r.unpack("BBHfII")
    r.check_dim("layer count", n_layers, 2, MAX_LAYERS)
    if dtype not in (DTYPE_F32, DTYPE_I8):
        r.fail(f"weight dtype code {dtype} unknown")
    dims = [r.check_dim("dim", d) for d in r.unpack(f"{n_layers + 1}H")]
    r.check_dim("class count", dims[-1], 2, MAX_CLASSES)
    if not np.isfinite(alpha):
        r.fail("alpha is NaN or Inf")
    file_crc = r.trailer()
    r.pos = header_len
    layers = []
    for i in range(n_layers):
        d_in, d_out, ldtype, relu, _ = r.unpack("HHBBH")
        if (d_in, d_out) != (dims[i], dims[i + 1]) or ldtype != dtype or relu != (i < n_layers - 1):
            r.fail(f"layer {i} block ({d_in}x{d_out}, dtype {ldtype}, relu {relu}) disagrees "
                   f"with the header")
        scale = None
        if ldtype == DTYPE_I8:
            scale = r.array(DTYPE_F32, d_out)
            weight = r.array(DTYPE_I8, d_out * d_in, (d_out, d_in))
            r.take(pad4(d_out * d_in) - d_out * d_in)
            r.check_finite(f"layer {i} scale", scale)
        else:
            weight = r.array(DTYPE_F32, d_out * d_in, (d_out, d_in))
            r.check_finite(f"layer {i} weight", weight)
        bias = r.array(DTYPE_F32, d_out)
        r.check_finite(f"layer {i} bias", bias)
        layers.append(ModelLayer(weight, bias, scale, bool(relu)))
    if r.pos != len(data) - 4:
        r.fail(f"{len(data) - 4 - r.pos} unexpected bytes after the last layer")
    return ModelFile(layers, rank, alpha, mask, file_crc)


def write_model(path, model):
    return _write_sealed(path, model, encode_model)


read_model = decode_model


# ---------------------------------------------------------------- dataset

@dataclass
class DatasetFile:
    features: np.ndarray  # stored values: float32, or int8 codes when scale applies
    labels: np.ndarray
    n_classes: int
    dtype: int = DTYPE_F32
    scale: float = 1.0
    file_crc: int = 0

    def float_features(self):
        f = self.features.astype(np.float32)
        return f * np.float32(self.scale) if self.dtype == DTYPE_I8 else f


def quantize_features(x):
    """Symmetric int8 with one scale for the whole dataset (max |x| maps to 127)."""
    x = np.asarray(x, np.float32)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    scale = np.float32(peak / 127.0 if peak > 0 else 1.0)
    return np.clip(np.round(x / scale), -127, 127).astype(np.int8), float(scale)


def dataset_from_arrays(x, y, n_classes, dtype=DTYPE_F32):
    x = np.asarray(x, np.float32)
    if dtype == DTYPE_I8:
        q, scale = quantize_features(x)
        return DatasetFile(q, np.asarray(y, np.uint8), n_classes, DTYPE_I8, scale)
    return DatasetFile(x, np.asarray(y, np.uint8), n_classes, DTYPE_F32, 1.0)


def dataset_header(n_features, n_classes, dtype, scale):
    return _seal_header(_PREFIX.pack(DATASET_MAGIC, VERSION, 0)
                        + struct.pack("<HHB3xf", n_features, n_classes, dtype, scale))


def dataset_record(features, label, dtype):
    return np.asarray(features, NUMPY_DTYPES[dtype]).tobytes() + struct.pack("<B", label)


def encode_dataset(ds):
    n, n_features = ds.features.shape
    parts = [dataset_header(n_features, ds.n_classes, ds.dtype, ds.scale)]
    parts += [dataset_record(ds.features[k], int(ds.labels[k]), ds.dtype) for k in range(n)]
    return _with_trailer(b"".join(parts))


def decode_dataset(source, name=None):
    data, path = _read_bytes(source, name)
    r = _Reader(data, path, "dataset")
    header_len = r.header(DATASET_MAGIC)
    n_features, n_classes, dtype, scale = r.unpack("HHB3xf")
    r.check_dim("feature count", n_features)
    r.check_dim("class count", n_classes, 2, MAX_CLASSES)
    if dtype not in (DTYPE_F32, DTYPE_I8):
        r.fail(f"feature dtype code {dtype} unknown")
    if not np.isfinite(scale) or scale <= 0:
        r.fail(f"scale {scale} is not a positive number")
    file_crc = r.trailer()
    record_len = n_features * np.dtype(NUMPY_DTYPES[dtype]).itemsize + 1
    body = len(data) - header_len - 4
    if body < 0 or body % record_len:
        r.fail(f"payload of {body} bytes is not a whole number of {record_len}-byte records")
    n = body // record_len
    records = np.frombuffer(data, np.uint8, n * record_len, header_len).reshape(n, record_len)
    features = records[:, :-1].copy().view(NUMPY_DTYPES[dtype]).reshape(n, n_features)
    labels = records[:, -1].copy()
    r.check_finite("features", features)
    if n and labels.max() >= n_classes:
        r.fail(f"label {labels.max()} is not below the class count {n_classes}")
    return DatasetFile(features, labels, n_classes, dtype, float(scale), file_crc)


def write_dataset(path, ds):
    return _write_sealed(path, ds, encode_dataset)


read_dataset = decode_dataset


# ---------------------------------------------------------------- activation cache

@dataclass
class CacheSegment:
    dim: int
    dtype: int = DTYPE_F32
    scale: float = 1.0

    @property
    def nbytes(self):
        return pad4(self.dim * np.dtype(NUMPY_DTYPES[self.dtype]).itemsize)


@dataclass
class CacheFile:
    model_crc: int
    dataset_crc: int
    segments: list
    records: list = field(default_factory=list)  # per sample: list of arrays (stored codes), or None if bad

    @property
    def record_len(self):
        return sum(s.nbytes for s in self.segments)


def encode_cache_header(cache, n_records):
    body = _PREFIX.pack(CACHE_MAGIC, VERSION, 0) + struct.pack(
        "<IIIHBx", cache.model_crc, cache.dataset_crc, n_records, cache.record_len,
        len(cache.segments))
    body += b"".join(struct.pack("<HBxf", s.dim, s.dtype, s.scale) for s in cache.segments)
    return _seal_header(body)


def encode_cache_record(segments, values):
    parts = []
    for seg, v in zip(segments, values):
        raw = np.asarray(v, NUMPY_DTYPES[seg.dtype]).tobytes()
        parts.append(raw + bytes(seg.nbytes - len(raw)))
    payload = b"".join(parts)
    return payload + struct.pack("<I", crc32(payload))


def encode_cache(cache):
    return encode_cache_header(cache, len(cache.records)) + b"".join(
        encode_cache_record(cache.segments, rec) for rec in cache.records)


def decode_cache(source, name=None):
    """Bad records come back as None (to recompute), never as values."""
    data, path = _read_bytes(source, name)
    r = _Reader(data, path, "cache")
    header_len = r.header(CACHE_MAGIC)
    model_crc, dataset_crc, n_records, record_len, n_seg = r.unpack("IIIHBx")
    r.check_dim("segment count", n_seg, 1, MAX_LAYERS)
    segments = []
    for _ in range(n_seg):
        dim, dtype, scale = r.unpack("HBxf")
        if dtype not in NUMPY_DTYPES:
            r.fail(f"segment dtype code {dtype} unknown")
        if not np.isfinite(scale) or scale <= 0:
            r.fail(f"segment scale {scale} is not a positive number")
        segments.append(CacheSegment(r.check_dim("segment dim", dim), dtype, scale))
    cache = CacheFile(model_crc, dataset_crc, segments)
    if cache.record_len != record_len:
        r.fail(f"record length {record_len} disagrees with the segments ({cache.record_len})")
    stride = record_len + 4
    for k in range(n_records):
        start = header_len + k * stride
        chunk = data[start:start + stride]
        if len(chunk) < stride or crc32(chunk[:-4]) != struct.unpack("<I", chunk[-4:])[0]:
            cache.records.append(None)
            continue
        values, off = [], 0
        for seg in segments:
            dt = np.dtype(NUMPY_DTYPES[seg.dtype])
            values.append(np.frombuffer(chunk, dt, seg.dim, off).copy())
            off += seg.nbytes
        cache.records.append(values)
    return cache


read_cache = decode_cache


# ---------------------------------------------------------------- adapters

@dataclass
class Adapter:
    layer: int
    kind: int
    A: np.ndarray
    B: np.ndarray


@dataclass
class AdapterFile:
    model_crc: int
    rank: int
    n_classes: int
    alpha: float
    adapters: list
    epochs_done: int = 0
    method: str = "skip2lora"
    file_crc: int = 0

    @property
    def scaling(self):
        return self.alpha / self.rank


def encode_adapters(af):
    body = _PREFIX.pack(ADAPTER_MAGIC, VERSION, 0) + struct.pack(
        "<IBBHfIB3x", af.model_crc, len(af.adapters), af.rank, af.n_classes, af.alpha,
        af.epochs_done, METHOD_CODES[af.method])
    payload = []
    for a in af.adapters:
        A = np.atleast_2d(np.asarray(a.A, "<f4"))
        B = np.asarray(a.B, "<f4").reshape(len(a.B), -1)
        body += struct.pack("<BBHHHHH", a.layer, a.kind, *A.shape, *B.shape, 0)
        payload += [A.tobytes(), B.tobytes()]
    return _with_trailer(_seal_header(body) + b"".join(payload))


def decode_adapters(source, name=None):
    data, path = _read_bytes(source, name)
    r = _Reader(data, path, "adapter")
    header_len = r.header(ADAPTER_MAGIC)
    model_crc, n, rank, n_classes, alpha, epochs, method = r.unpack("IBBHfIB3x")
    r.check_dim("rank", rank, 1, MAX_RANK)
    r.check_dim("class count", n_classes, 2, MAX_CLASSES)
    names = {v: k for k, v in METHOD_CODES.items()}
    if method not in names:
        r.fail(f"method code {method} unknown")
    if not np.isfinite(alpha):
        r.fail("alpha is NaN or Inf")
    entries = [r.unpack("BBHHHHH") for _ in range(n)]
    file_crc = r.trailer()
    r.pos = header_len
    adapters = []
    for layer, kind, ar, ac, br, bc, _ in entries:
        if kind not in (KIND_SKIP, KIND_PARALLEL, KIND_DELTA) or layer >= MAX_LAYERS:
            r.fail(f"adapter entry (layer {layer}, kind {kind}) is invalid")
        for name, v in (("rows", ar), ("cols", ac), ("rows", br), ("cols", bc)):
            r.check_dim(f"adapter {name}", v)
        A = r.array(DTYPE_F32, ar * ac, (ar, ac))
        B = r.array(DTYPE_F32, br * bc, (br, bc))
        r.check_finite("adapter A", A)
        r.check_finite("adapter B", B)
        adapters.append(Adapter(layer, kind, A, B))
    if r.pos != len(data) - 4:
        r.fail(f"{len(data) - 4 - r.pos} unexpected bytes after the last adapter")
    return AdapterFile(model_crc, rank, n_classes, alpha, adapters, epochs, names[method], file_crc)


def write_adapters(path, af):
    return _write_sealed(path, af, encode_adapters)


read_adapters = decode_adapters
