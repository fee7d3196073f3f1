#!/usr/bin/env python3
"""The virtual board without the CLI: `python tools/vboard.py start|stop|status [options]`.

Same as `skip2lora board ...` (see docs/virtual-board.md); works from a fresh clone's .venv
even before the package is installed.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host"))

from skip2lora.commands import board  # noqa: E402
from skip2lora.errors import UserError  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tools/vboard.py")
    board.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["board", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.run(args)
    except UserError as error:
        print(f"vboard: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
