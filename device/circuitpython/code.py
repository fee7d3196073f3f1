# Run at every reset after boot.py: says which kernels the device package picked on this board
# (ulab where the build has it, else pure Python: CircuitPython has no viper) and whether the
# drive is writable to code, as boot.py makes it.
import os

import s2l
from s2l import kernels

print("s2l", s2l.__version__, "on", os.uname().machine)
print("kernels:", kernels.get().NAME, "(available: %s)" % ", ".join(kernels.available()))
try:
    f = open("s2l_write_check", "wb")
    f.close()
    os.remove("s2l_write_check")
    print("filesystem: writable")
except OSError:
    print("filesystem: read-only to code; copy boot.py to the board and reset it")
