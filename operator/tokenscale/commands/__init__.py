"""One module per `tokenscale` subcommand: `add_arguments(parser)` and `run(args) -> int`."""
