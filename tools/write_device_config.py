"""Write device/s2l/config.py, the board's copy of host/skip2lora/config.py.

The board cannot import the host package, and a default typed twice (once per side) is how
the board came to train with lr 1/256 while the CLI said 0.01. So the board's constants are
written from the host's: every upper-case constant of skip2lora.config and every
FinetuneConfig default (as its field name in upper case), as plain literals every MicroPython
and CircuitPython parses alike. tests/test_config.py fails while the committed file differs
from what this writes.

    python tools/write_device_config.py          # (re)write device/s2l/config.py
    python tools/write_device_config.py --check  # exit 1 if the file on disk differs
"""
import sys
from dataclasses import fields
from pathlib import Path

from skip2lora import config

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "device" / "s2l" / "config.py"
HEADER = ("# generated from host/skip2lora/config.py by tools/write_device_config.py; do not edit\n"
          "# The board's method names, adapter kinds and fine-tuning defaults, the host's.\n")
_LITERALS = (type(None), bool, int, float, str)


def constants():
    """{NAME: value} for the board, in the order of host/skip2lora/config.py."""
    out = {k: v for k, v in vars(config).items() if k.isupper()}
    out.update((f.name.upper(), f.default) for f in fields(config.FinetuneConfig))
    return out


def _literal(name, value):
    items = value if isinstance(value, tuple) else (value,)
    if not all(isinstance(v, _LITERALS) for v in items):
        raise TypeError(f"{name} = {value!r} is not a plain literal the board can hold")
    return repr(value)


def render():
    return HEADER + "".join(f"{k} = {_literal(k, v)}\n" for k, v in constants().items())


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in argv:
        if TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run python tools/write_device_config.py")
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
