"""Arguments more than one subcommand takes, defined once so they read the same everywhere."""
from dataclasses import MISSING, fields

from skip2lora.board.budget import DEFAULT_SAMPLES, DEFAULT_SAMPLES_WHY


def add_port_argument(parser, help=None):
    """--port, given once per board: a list of ports in args.port (None when not given); more
    than one runs the command on every board at once (skip2lora.board.fleet)."""
    parser.add_argument("--port", "-p", action="append", default=None, metavar="PORT",
                        help=help or "serial port of the board, e.g. /dev/ttyACM0 (default: the "
                                     "running virtual board, see `skip2lora board start`); give "
                                     "it once per board to work on several boards at once")


def add_samples_argument(parser):
    """--samples of compile and flash: the one sample count their budgets assume."""
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                        help=f"fine-tuning samples to budget for (default {DEFAULT_SAMPLES}: "
                             f"{DEFAULT_SAMPLES_WHY})")


def add_config_arguments(parser, config, names, **overrides):
    """One --option per field of the dataclass `config` named in `names`, with the field's
    default, type, choices and help, so a new setting is one field in skip2lora/config.py.
    overrides[name] is a dict of add_argument keywords that replace those (e.g. a default of
    None meaning "what the model says")."""
    by_name = {f.name: f for f in fields(config)}
    for name in names:
        f = by_name[name]
        kw = {"default": None if f.default is MISSING else f.default,
              "help": f.metadata.get("help", "")}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        elif f.type in (int, float):
            kw["type"] = f.type
        kw.update(overrides.get(name, {}))
        if kw["default"] is not None and "help" not in overrides.get(name, {}):
            kw["help"] += " (default: %(default)s)"
        parser.add_argument("--" + name.replace("_", "-"), **kw)
