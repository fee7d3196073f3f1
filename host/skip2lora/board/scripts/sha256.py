# The sha256 of a board file in hex, streamed 512 bytes at a time; MISSING when there is no such
# file, NOHASH when the firmware has no hashlib (CircuitPython without Wi-Fi: the host reads the
# file back and hashes it itself).
try:
    import hashlib, binascii
except ImportError:
    hashlib = None


def sha256(path):
    try:
        f = open(path, 'rb')
    except OSError:
        print('MISSING')
        return
    try:
        if hashlib is None:
            print('NOHASH')
            return
        h = hashlib.sha256()
        while True:
            b = f.read(512)
            if not b:
                break
            h.update(b)
        print(binascii.hexlify(h.digest()).decode())
    finally:
        f.close()
