# The file_crc trailer of a board file (its last 4 bytes, u32 little-endian; docs/formats.md),
# so `pull` checks adapters against the board's model without copying the model.
import struct


def file_crc(path):
    with open(path, 'rb') as f:
        f.seek(-4, 2)
        print(struct.unpack('<I', f.read(4))[0])
