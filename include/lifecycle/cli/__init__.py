"""`lifecycle`: the one entry point shared by the Makefile, local debugging and benchmarks.

Every command reads its settings from `LIFECYCLE_*` environment variables (see README);
`--warehouse URL` overrides the warehouse for one call. The commands live in one module per
topic, each adding its subcommands with `register`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from lifecycle.cli import campaigns, dev, feedback, reports, warehouse

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lifecycle",
        description="Retention email automation: warehouse segments, templates, SendGrid delivery.",
        epilog="Settings come from LIFECYCLE_* environment variables; see the README.",
    )
    parser.add_argument(
        "--warehouse",
        metavar="URL",
        help="SQLAlchemy URL (default: $LIFECYCLE_WAREHOUSE_URL or .local/warehouse.db)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for topic in (warehouse, campaigns, reports, feedback, dev):
        topic.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)
