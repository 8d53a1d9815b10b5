"""One module per `anomalyd` subcommand: `add_parser(subparsers)` declares it, `run(args)` does it."""
