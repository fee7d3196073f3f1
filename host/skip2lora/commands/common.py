"""Arguments more than one subcommand takes, defined once so they read the same everywhere."""
from dataclasses import MISSING, fields

from skip2lora.board.budget import DEFAULT_SAMPLES, DEFAULT_SAMPLES_WHY


def add_port_argument(parser):
    parser.add_argument("--port", "-p", default=None,
                        help="serial port of the board, e.g. /dev/ttyACM0 (default: the running "
                             "virtual board, see `skip2lora board start`)")


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
