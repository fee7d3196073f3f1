# Fine-tuning dataset file (.s2ld) on the board: open (checked once, streamed), read one
# record by seek, and append labelled samples collected on the board.
import struct

from .compat import S2LError, exists, open_write, sync
from .formats import (DATASET_MAGIC, F32, I8, VERSION, MAX_CLASSES, check_dim, crc32, fail,
                      is_finite, open_checked, read_exact, seal_header, zeros)

_WHAT = "dataset"


class Dataset:
    """A dataset file: features (f32, or int8 codes with one scale) and a u8 label per record.

    ds.n, ds.n_features, ds.n_classes, ds.dtype (0 f32, 1 int8), ds.scale, ds.labels,
    ds.file_crc; ds.read(k) -> label, features in ds.x (array 'f' or 'b').
    """

    def __init__(self, path):
        self.path = path
        f, head, size, crc = open_checked(path, DATASET_MAGIC)
        self._f = f
        try:
            self._parse(f, head, size, crc)
        except Exception:
            f.close()
            raise

    def _parse(self, f, head, size, crc):
        path = self.path
        n_features, n_classes, dtype, scale = struct.unpack_from("<HHB3xf", head, 8)
        check_dim(path, _WHAT, "feature count", n_features)
        check_dim(path, _WHAT, "class count", n_classes, 2, MAX_CLASSES)
        if dtype not in (F32, I8):
            fail(path, _WHAT, "feature dtype code %d unknown" % dtype)
        if not is_finite(scale) or scale <= 0:
            fail(path, _WHAT, "scale %s is not a positive number" % scale)
        self.header_len = len(head)
        self.n_features, self.n_classes, self.dtype, self.scale = n_features, n_classes, dtype, scale
        self.record_len = n_features * (4 if dtype == F32 else 1) + 1
        body = size - self.header_len - 4
        if body < 0 or body % self.record_len:
            fail(path, _WHAT, "payload of %d bytes is not a whole number of %d-byte records"
                 % (body, self.record_len))
        self.n = body // self.record_len
        self.file_crc = crc
        self.size = size
        self.x = zeros("f" if dtype == F32 else "b", n_features)
        self._lbl = bytearray(1)
        # one pass: labels into RAM (n bytes), every label and every f32 value checked
        self.labels = bytearray(self.n)
        f.seek(self.header_len)
        nb = self.record_len - 1
        for k in range(self.n):
            read_exact(f, self.x, nb, path, _WHAT)
            read_exact(f, self._lbl, 1, path, _WHAT)
            lab = self._lbl[0]
            if lab >= n_classes:
                fail(path, _WHAT, "label %d is not below the class count %d" % (lab, n_classes))
            if dtype == F32:
                for v in self.x:
                    if not (v == v and v - v == 0.0):
                        fail(path, _WHAT, "features hold NaN or Inf")
            self.labels[k] = lab

    def __len__(self):
        return self.n

    def read(self, k, out=None):
        """Features of record k into out (default self.x); returns the label."""
        if not 0 <= k < self.n:
            raise S2LError("record %d does not exist: valid records are %s" % (
                k, "0..%d" % (self.n - 1) if self.n else "none (the dataset is empty)"),
                self.path)
        f = self._f
        f.seek(self.header_len + k * self.record_len)
        f.readinto(self.x if out is None else out)
        return self.labels[k]

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None

    # ------------------------------------------------------------------ writing on the board

    @staticmethod
    def create(path, n_features, n_classes, dtype="int8", scale=1.0, overwrite=False):
        """Write an empty dataset file (header + trailer) and open it. dtype "int8" stores
        q = round(x / scale) clipped to +-127; "f32" stores the floats."""
        code = {"f32": F32, "int8": I8}.get(dtype)
        if code is None:
            raise S2LError("dtype must be 'f32' or 'int8', got %r" % (dtype,), path)
        if not 1 <= n_features <= 4096 or not 2 <= n_classes <= MAX_CLASSES:
            raise S2LError("n_features must be 1..4096 and n_classes 2..255", path)
        if code == F32:
            scale = 1.0
        if not (scale > 0 and is_finite(scale)):
            raise S2LError("scale must be a positive number", path)
        if exists(path) and not overwrite:
            raise S2LError("already exists; open it with Dataset(path) or pass overwrite=True",
                           path)
        head = seal_header(struct.pack("<4sHHHHB3xf", DATASET_MAGIC, VERSION, 0, n_features,
                                       n_classes, code, scale))
        f = open_write(path)
        try:
            f.write(head)
            f.write(struct.pack("<I", crc32(head)))
        finally:
            f.close()
        sync()
        return Dataset(path)

    def append(self, x, label):
        """Add one labelled sample at the end: the record replaces the trailer and a new
        trailer continues the CRC (no re-read of the file). A power cut in between leaves a
        size/CRC mismatch that the reader reports."""
        path = self.path
        if not 0 <= label < self.n_classes:
            raise S2LError("label %d is not in 0..%d" % (label, self.n_classes - 1), path)
        if len(x) != self.n_features:
            raise S2LError("sample has %d features, the dataset %d" % (len(x), self.n_features),
                           path)
        buf = self.x
        if self.dtype == F32:
            for i in range(self.n_features):
                v = x[i]
                if not (v == v and v - v == 0.0):
                    raise S2LError("sample holds NaN or Inf", path)
                buf[i] = v
        else:
            inv = 1.0 / self.scale
            for i in range(self.n_features):
                q = int(round(x[i] * inv))
                buf[i] = 127 if q > 127 else (-127 if q < -127 else q)
        self._lbl[0] = label
        crc = crc32(self._lbl, crc32(buf, self.file_crc))
        self.close()
        try:
            f = open_write(path, "r+b")
        except S2LError:  # read-only: the dataset stays open for reading
            self._f = open(path, "rb")
            raise
        try:
            f.seek(self.size - 4)
            f.write(buf)
            f.write(self._lbl)
            f.write(struct.pack("<I", crc))
            f.flush()
        finally:
            f.close()
        self.size += self.record_len
        self.n += 1
        self.file_crc = crc
        self.labels.append(label)
        self._f = open(path, "rb")
        return self.n - 1
