"""Arguments more than one subcommand takes, defined once so they read the same everywhere."""


def add_port_argument(parser):
    parser.add_argument("--port", "-p", default=None,
                        help="serial port of the board, e.g. /dev/ttyACM0 (default: the running "
                             "virtual board, see `skip2lora board start`)")
