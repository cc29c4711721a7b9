"""The `sorakit` command. Each subcommand lives in its own module here and defines
`register(subparsers)`, which adds its parser and sets `func=run` on it."""
