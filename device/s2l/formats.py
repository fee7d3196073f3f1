# Board-side reader/writer of the four file formats, and of the fixed path's <adapters>.state
# that never leaves the board (spec: docs/formats.md).
# Streaming: a file is never read whole; the header is checked (magic, version, CRC) before
# any dim in it is trusted, and dims are checked against the limits before any allocation.
import struct
from array import array  # at the top: an import inside a function searches the filesystem on
# every call (about 1.5 KB of garbage on a board, fragmenting the heap between weight blocks)

from .config import METHODS, KIND_SKIP, KIND_PARALLEL, KIND_DELTA  # the host's (config.py)
from .compat import S2LError, file_size, open_write, replace, sync, remove

VERSION = 1
MODEL_MAGIC = b"S2LM"
DATASET_MAGIC = b"S2LD"
CACHE_MAGIC = b"S2LC"
ADAPTER_MAGIC = b"S2LA"
STATE_MAGIC = b"S2LS"  # <adapters>.state: the fixed path's int32 masters, bit for bit
F32, I8, I16, I32 = 0, 1, 2, 3
ITEMSIZE = (4, 1, 2, 4)
TYPECODE = ("f", "b", "h", "i")
MAX_DIM, MAX_CLASSES, MAX_LAYERS, MAX_RANK = 4096, 255, 16, 64
WHAT = {MODEL_MAGIC: "model", DATASET_MAGIC: "dataset", CACHE_MAGIC: "cache",
        ADAPTER_MAGIC: "adapter"}

_TABLE = None


def crc32_table(buf, crc=0):
    """Table-driven CRC32 (IEEE, as zlib): the fallback where binascii.crc32 is missing."""
    global _TABLE
    if _TABLE is None:
        t = array("I", bytearray(1024))
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
            t[i] = c
        _TABLE = t
    t = _TABLE
    crc ^= 0xFFFFFFFF
    for b in memoryview(buf).cast("B") if hasattr(memoryview, "cast") else bytes(buf):
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:  # unsigned on MicroPython, CircuitPython and CPython 3 alike
    from binascii import crc32
except ImportError:  # CircuitPython builds without binascii.crc32
    crc32 = crc32_table


def pad4(n):
    return (n + 3) & ~3


def fail(path, what, message):
    raise S2LError("%s; the %s file is corrupt or not a %s file: rebuild it"
                   % (message, what, what), path)


def check_dim(path, what, name, value, low=1, high=MAX_DIM):
    if not low <= value <= high:
        fail(path, what, "%s = %d is outside %d..%d" % (name, value, low, high))
    return value


def is_finite(v):
    return v == v and v - v == 0.0


def check_finite(path, what, name, arr):
    for v in arr:
        if not (v == v and v - v == 0.0):
            fail(path, what, "%s holds NaN or Inf" % name)


try:  # CircuitPython's array has `*`; MicroPython's does not
    _REPEAT = len(array("b", (0,)) * 2) == 2
except TypeError:
    _REPEAT = False


def empty(typecode, n):
    """An array of n items (contents undefined), allocated once and in place: building it from
    range() lets MicroPython size it from len() without the transient copy that
    array(tc, bytearray(nbytes)) makes (which needs twice the RAM of a 32 KB weight matrix).
    CircuitPython refuses a range value that does not fit the type (OverflowError past 127 for
    "b") where MicroPython wraps it; it has `array * n` instead, which is as direct."""
    if _REPEAT:
        return array(typecode, (0,)) * n
    return array(typecode, range(n))


def zeros(typecode, n):
    """A zero-filled array of n items, allocated once, with no transient (array(tc,
    bytearray(nbytes)) left a garbage run as long as the array beside it: holes a later
    array of that size could not always use)."""
    if _REPEAT:
        return array(typecode, (0,)) * n
    a = empty(typecode, n)
    for i in range(n):
        a[i] = 0
    return a


def read_exact(f, buf, nbytes, path, what):
    """readinto the whole buffer (nbytes long) or fail as truncated."""
    n = f.readinto(buf)
    if n is None or n != nbytes:
        fail(path, what, "truncated")
    return buf


def open_checked(path, magic, with_trailer=True):
    """Open path, check magic, version, header length and header CRC (and, with_trailer, the
    whole-file CRC, streamed). Returns (file, header bytes, size, file_crc)."""
    what = WHAT[magic]
    size = file_size(path)
    try:
        f = open(path, "rb")
    except OSError:
        raise S2LError("cannot open; check the path", path)
    try:
        if size < 12:
            fail(path, what, "too short for a header (%d bytes)" % size)
        pre = f.read(8)
        found, version, header_len = struct.unpack("<4sHH", pre)
        if found != magic:
            fail(path, what, "bad magic %r, expected %r" % (found, magic))
        if version != VERSION:
            raise S2LError("format version %d is not supported (this board reads version %d); "
                           "recompile or repack it with this version of skip2lora"
                           % (version, VERSION), path)
        if header_len < 12 or header_len % 4 or header_len > size or header_len > 1024:
            fail(path, what, "bad header length %d" % header_len)
        head = bytearray(header_len)
        head[0:8] = pre
        rest = f.read(header_len - 8)
        if len(rest) != header_len - 8:
            fail(path, what, "truncated")
        head[8:] = rest
        if crc32(memoryview(head)[:header_len - 4]) != struct.unpack_from("<I", head, header_len - 4)[0]:
            fail(path, what, "header CRC mismatch")
        file_crc = None
        if with_trailer:
            file_crc = stream_crc(f, size, path, what)
            f.seek(header_len)
        return f, head, size, file_crc
    except Exception:
        f.close()
        raise


def stream_crc(f, size, path, what, block=256):
    """Check the trailer: CRC32 of every byte before the last 4, read one block at a time."""
    if size < 16:
        fail(path, what, "too short")
    f.seek(0)
    buf = bytearray(block)
    mv = memoryview(buf)
    crc = 0
    left = size - 4
    while left > 0:
        n = f.readinto(buf) if left >= block else f.readinto(mv[:left])
        if not n:
            fail(path, what, "truncated")
        crc = crc32(mv[:n], crc)
        left -= n
    tail = f.read(4)
    if len(tail) != 4 or struct.unpack("<I", tail)[0] != crc:
        fail(path, what, "file CRC mismatch")
    return crc


def seal_header(body):
    """Pad, fill header_len, append the header CRC (body starts with magic|version|0)."""
    header_len = pad4(len(body)) + 4
    out = bytearray(header_len)
    out[:len(body)] = body
    struct.pack_into("<H", out, 6, header_len)
    struct.pack_into("<I", out, header_len - 4, crc32(memoryview(out)[:header_len - 4]))
    return out


# ------------------------------------------------------------------ adapters

def write_adapters(path, model_crc, rank, n_classes, alpha, epochs_done, method, entries,
                   payload):
    """entries: [(layer, kind, a_rows, a_cols, b_rows, b_cols)]; payload: an iterable of
    buffers (f32) giving, in order, every adapter's A (row-major) then B. Written to
    path + '.tmp', flushed, then renamed over path, so a power cut leaves the previous
    complete file. Returns the file CRC."""
    body = bytearray(struct.pack("<4sHHIBBHfIB3x", ADAPTER_MAGIC, VERSION, 0, model_crc,
                                 len(entries), rank, n_classes, alpha, epochs_done,
                                 METHODS.index(method)))
    want = 0
    for layer, kind, ar, ac, br, bc in entries:
        body += struct.pack("<BBHHHHH", layer, kind, ar, ac, br, bc, 0)
        want += 4 * (ar * ac + br * bc)
    head = seal_header(body)
    tmp = path + ".tmp"
    f = open_write(tmp)
    try:
        f.write(head)
        crc = crc32(head)
        got = 0
        for buf in payload:
            got += f.write(buf)
            crc = crc32(buf, crc)
        f.write(struct.pack("<I", crc))
        f.flush()
    finally:
        f.close()
    if got != want:
        remove(tmp)
        raise S2LError("internal: adapter payload %d bytes, expected %d" % (got, want), path)
    sync()
    replace(tmp, path)
    return crc


def read_adapters(path):
    """Returns a dict: model_crc, rank, n_classes, alpha, epochs_done, method, file_crc, and
    adapters = [(layer, kind, A rows [array('f')], a_rows, a_cols, B array('f'), b_rows,
    b_cols)]."""
    what = "adapter"
    f, head, size, file_crc = open_checked(path, ADAPTER_MAGIC)
    try:
        model_crc, n, rank, n_classes, alpha, epochs, method = struct.unpack_from(
            "<IBBHfIB", head, 8)
        check_dim(path, what, "rank", rank, 1, MAX_RANK)
        check_dim(path, what, "class count", n_classes, 2, MAX_CLASSES)
        if method >= len(METHODS):
            fail(path, what, "method code %d unknown" % method)
        if not is_finite(alpha):
            fail(path, what, "alpha is NaN or Inf")
        if 28 + 12 * n + 4 > len(head):
            fail(path, what, "header too short for %d adapters" % n)
        entries = []
        total = len(head) + 4
        for i in range(n):
            layer, kind, ar, ac, br, bc, _ = struct.unpack_from("<BBHHHHH", head, 28 + 12 * i)
            if kind > KIND_DELTA or layer >= MAX_LAYERS:
                fail(path, what, "adapter entry (layer %d, kind %d) is invalid" % (layer, kind))
            for v in (ar, ac, br, bc):
                check_dim(path, what, "adapter dim", v)
            entries.append((layer, kind, ar, ac, br, bc))
            total += 4 * (ar * ac + br * bc)
        if total != size:
            fail(path, what, "size %d does not match the %d adapters (%d)" % (size, n, total))
        adapters = []
        for layer, kind, ar, ac, br, bc in entries:
            A = [read_exact(f, zeros("f", ac), 4 * ac, path, what) for _ in range(ar)]
            B = read_exact(f, zeros("f", br * bc), 4 * br * bc, path, what)
            for row in A:
                check_finite(path, what, "adapter A", row)
            check_finite(path, what, "adapter B", B)
            adapters.append((layer, kind, A, ar, ac, B, br, bc))
    finally:
        f.close()
    return {"model_crc": model_crc, "rank": rank, "n_classes": n_classes, "alpha": alpha,
            "epochs_done": epochs, "method": METHODS[method], "file_crc": file_crc,
            "adapters": adapters}


# ------------------------------------------------------------------ <adapters>.state

def state_head(adapters_crc, mantissas):
    """magic, the adapters file's CRC (ties the state to that very file), the adapter count,
    and each adapter's activation-scale mantissa as float32 bits (the masters' unit)."""
    head = struct.pack("<4sII", STATE_MAGIC, adapters_crc, len(mantissas))
    for m in mantissas:
        head += struct.pack("<I", m)
    return head


def write_state(path, adapters_crc, mantissas, masters):
    """<adapters>.state: state_head, then the int32 buffers of masters in order (raw, the
    board's byte order: every adapter's A rows then B), CRC32 of all before it. Atomic like
    the adapters (path + '.tmp', flushed, renamed)."""
    head = state_head(adapters_crc, mantissas)
    tmp = path + ".tmp"
    f = open_write(tmp)
    try:
        f.write(head)
        crc = crc32(head)
        for buf in masters:
            f.write(buf)
            crc = crc32(buf, crc)
        f.write(struct.pack("<I", crc))
        f.flush()
    finally:
        f.close()
    sync()
    replace(tmp, path)


def read_state(path, adapters_crc, mantissas, masters):
    """Read <adapters>.state into the int32 buffers of masters; False (buffers undefined)
    unless the file exists, is whole, and belongs to the adapters file with CRC adapters_crc
    and to these mantissas."""
    head = state_head(adapters_crc, mantissas)
    try:
        f = open(path, "rb")
    except OSError:
        return False
    try:
        if f.read(len(head)) != head:
            return False
        crc = crc32(head)
        for buf in masters:
            if f.readinto(buf) != 4 * len(buf):
                return False
            crc = crc32(buf, crc)
        tail = f.read(5)
        return len(tail) == 4 and struct.unpack("<I", tail)[0] == crc
    finally:
        f.close()
