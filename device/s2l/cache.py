# The Skip-Cache file (.s2lc): frozen activations of every sample, one fixed-size record each,
# written once and sequentially (flash wear), read back by seek, every record CRC-checked.
import struct

from .compat import S2LError, file_size, open_write, remove, replace, sync
from .formats import (CACHE_MAGIC, VERSION, ITEMSIZE, MAX_LAYERS, crc32, pad4, seal_header)


# CRC-32 (zlib's) of any bytes followed by their own CRC, little-endian: what read() checks
RESIDUE = 0x2144DF1C


class Cache:
    """bufs: the typed arrays (or views) one record is read into / written from, in order,
    together exactly the record's segments (each pad4 bytes long; one buffer may hold
    several); segs: [(dim, dtype)] of those segments, for the header."""

    def __init__(self, path, model_crc, dataset_crc, n_records, segs, bufs):
        self.path = path
        self.model_crc, self.dataset_crc, self.n = model_crc, dataset_crc, n_records
        self.segs, self.bufs = segs, bufs
        self.record_len = 0
        for dim, dt in segs:
            self.record_len += pad4(dim * ITEMSIZE[dt])
        self.stride = self.record_len + 4
        self._f = None
        self._crc = bytearray(4)
        self.header_len = 0
        self.reads = 0       # records served from the file
        self.bad = 0         # records refused (CRC or short): recomputed by the caller
        self.reason = ""     # why the file on flash was not used, when it was not

    def open(self):
        """Use the file on flash if it matches; returns its segment scales (float32 bit
        patterns, never floats: see qmath), else None."""
        self.close()
        path = self.path
        try:
            size = file_size(path)
            f = open(path, "rb")
        except (S2LError, OSError):
            self.reason = "no cache file"
            return None
        try:
            pre = f.read(8)
            if len(pre) < 8:
                raise ValueError("truncated")
            magic, version, header_len = struct.unpack("<4sHH", pre)
            if magic != CACHE_MAGIC or version != VERSION or header_len % 4 or \
                    not 24 <= header_len <= 24 + 8 * MAX_LAYERS + 8:
                raise ValueError("bad magic, version or header length")
            head = pre + f.read(header_len - 8)
            if len(head) != header_len or \
                    crc32(head[:header_len - 4]) != struct.unpack_from("<I", head, header_len - 4)[0]:
                raise ValueError("header CRC mismatch")
            mcrc, dcrc, n, rl, S = struct.unpack_from("<IIIHB", head, 8)
            if mcrc != self.model_crc or dcrc != self.dataset_crc:
                raise ValueError("built from another model or dataset")
            if n != self.n or rl != self.record_len or S != len(self.segs):
                raise ValueError("layout differs")
            scales = []
            for i in range(S):
                dim, dt, scale = struct.unpack_from("<HBxI", head, 24 + 8 * i)
                if (dim, dt) != self.segs[i] or not 0 < scale < 0x7F800000:
                    raise ValueError("segment layout differs")
                scales.append(scale)
            if size != header_len + n * self.stride:
                raise ValueError("incomplete (%d bytes, %d expected)"
                                 % (size, header_len + n * self.stride))
        except (ValueError, OSError) as e:
            f.close()
            self.reason = "stale: %s" % e
            return None
        self._f = f
        self.header_len = header_len
        self.reason = ""
        return scales

    def read(self, k):
        """Read record k into the buffers; False if it is missing or its CRC is wrong (the
        caller then recomputes it and never trusts the buffers). The check runs the CRC over
        the record and its stored CRC, which gives RESIDUE for an intact record: no integer
        above 2**30 (a heap object on a board) is made for an intact record's last step."""
        f = self._f
        f.seek(self.header_len + k * self.stride)
        crc = 0
        for b in self.bufs:
            f.readinto(b)
        if f.readinto(self._crc) != 4:
            self.bad += 1
            return False
        for b in self.bufs:
            crc = crc32(b, crc)
        if crc32(self._crc, crc) != RESIDUE:
            self.bad += 1
            return False
        self.reads += 1
        return True

    def build(self, scales, fill):
        """Write the whole file once, sequentially: fill(k) puts record k in the buffers
        (the trainer's path passes its frozen(k)); scales are the segments' float32 bit
        patterns.
        Written under a temporary name and renamed, so a power cut never leaves a file that
        looks complete; then opened for reading."""
        self.close()
        body = struct.pack("<4sHHIIIHBx", CACHE_MAGIC, VERSION, 0, self.model_crc,
                           self.dataset_crc, self.n, self.record_len, len(self.segs))
        for (dim, dt), scale in zip(self.segs, scales):
            body += struct.pack("<HBxI", dim, dt, scale)
        head = seal_header(body)
        tmp = self.path + ".tmp"
        f = open_write(tmp)
        try:
            f.write(head)
            for k in range(self.n):
                fill(k)
                crc = 0
                for b in self.bufs:
                    f.write(b)
                    crc = crc32(b, crc)
                struct.pack_into("<I", self._crc, 0, crc)
                f.write(self._crc)
            f.flush()
        except Exception:
            f.close()
            remove(tmp)
            raise
        f.close()
        sync()
        replace(tmp, self.path)
        if self.open() is None:
            raise S2LError("cache just written does not read back (%s)" % self.reason, self.path)

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None
