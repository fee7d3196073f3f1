# CircuitPython runs boot.py once at power-on, before USB starts. While USB shows the CIRCUITPY
# drive to a computer, the drive is read-only to code, and the device package cannot write its
# Skip-Cache, adapters or collected samples (OSError 30). This makes it writable to code and
# read-only to the computer instead. To copy files from the computer again, remove this file
# from the board's REPL (import os; os.remove("/boot.py")) and reset the board.
import storage

storage.remount("/", readonly=False)
