"""`lifecycle`: the one entry point shared by the Makefile, local debugging and benchmarks.

Every command reads its settings from `LIFECYCLE_*` environment variables (see README);
`--warehouse URL` overrides the warehouse for one call. The commands live in one module per
topic, each adding its subcommands with `register`.

Errors are one line on stderr (and a hint where one helps), never a traceback unless `--debug`
is given: exit code 2 for usage errors (bad arguments, an unknown campaign id), 1 for failures.
`common.explain` maps the errors it knows; any other is "unexpected error: Type: message".
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from lifecycle.cli import campaigns, common, dev, feedback, privacy, reports, warehouse

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
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of an error instead of one line",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for topic in (warehouse, campaigns, reports, feedback, privacy, dev):
        topic.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except Exception as error:
        if args.debug and not isinstance(error, common.UsageError):
            raise
        problem = common.explain(error, args)
        print(common.redact(problem.message, args), file=sys.stderr)
        if problem.hint:
            print(f"hint: {common.redact(problem.hint, args)}", file=sys.stderr)
        return problem.exit_code
