"""One module per `skip2lora` subcommand, each exposing register(subparsers) and run(args)."""
