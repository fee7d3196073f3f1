"""The `skip2lora` command: a thin dispatcher over one module per subcommand.

Each subcommand lives in skip2lora.commands.<name> with `register(subparsers)` (adds its
parser and sets `run`) and `run(args) -> int`, so a later command is one new module and one
name in COMMANDS. Here only the policy every command shares: a UserError is the user's
mistake and prints as one line with exit status 2; Ctrl-C exits 130 without a traceback; a
reader that goes away (`| head`) ends the command quietly, as it ends any Unix tool.
"""
import argparse
import importlib
import os
import sys

from skip2lora import __version__
from skip2lora.errors import UserError

COMMANDS = ("compile", "boards", "board", "flash", "finetune", "pull", "export", "eval", "bench")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it


def build_parser():
    parser = argparse.ArgumentParser(
        prog="skip2lora",
        description="Fine-tune a small pretrained MLP on a MicroPython board with Skip2-LoRA.")
    parser.add_argument("--version", action="version", version=f"skip2lora {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"skip2lora.commands.{name}").register(subparsers)
    return parser


def _one_line(text):
    return " ".join(str(text).split())


def main(argv=None) -> int:
    try:
        status = _run(argv)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return status
    except UserError as error:
        print(f"skip2lora: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("skip2lora: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout is gone: point it at /dev/null so the interpreter's final flush is silent too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _run(argv):
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse has printed usage or help already
        return exit_.code if isinstance(exit_.code, int) else EXIT_USER_ERROR
    return args.run(args) or 0
