"""`lifecycle serve-public`, `suppressions sync`: what comes back from customers and SendGrid."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from lifecycle.cli.arguments import port
from lifecycle.cli.common import Commands, engine_from, settings_from


def cmd_serve_public(args: argparse.Namespace) -> int:
    import uvicorn

    from lifecycle.feedback import tokens
    from lifecycle.web.public import standalone_app

    settings = settings_from(args)
    tokens.secrets_for(settings)  # refused now, not at the first link, if hosts cannot share it
    print(f"webhook: http://{args.host}:{args.port}/lifecycle/events/sendgrid")
    uvicorn.run(standalone_app(settings), host=args.host, port=args.port, access_log=False)
    return 0


def cmd_suppressions_sync(args: argparse.Namespace) -> int:
    from lifecycle.feedback import suppressions

    settings = settings_from(args)
    try:
        result = suppressions.sync_with_settings(engine_from(args), settings, datetime.now(UTC))
    except suppressions.SendGridAPIError as exc:
        print(f"suppression sync failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"pulled {result.pulled:,} suppressions from {settings.sendgrid_host} "
        f"({result.added:,} new), pushed {result.pushed:,} unsubscribes and "
        f"{result.group_pushed:,} topic unsubscribes, lifted {result.lifted:,} topic "
        f"suppressions, {result.requests:,} API requests"
    )
    return 0


def register(commands: Commands) -> None:
    serve_public = commands.add_parser(
        "serve-public",
        help="serve the SendGrid event webhook and unsubscribe pages (uvicorn)",
        description="The public app the Airflow plugin mounts at /lifecycle, served alone.",
    )
    serve_public.add_argument("--host", default="127.0.0.1")
    serve_public.add_argument("--port", type=port, default=8090)
    serve_public.set_defaults(handler=cmd_serve_public)

    supp = commands.add_parser("suppressions", help="the suppression list and SendGrid")
    supp_commands = supp.add_subparsers(dest="suppressions_command", required=True)
    supp_sync = supp_commands.add_parser(
        "sync",
        help="pull SendGrid's suppressions, push our unsubscribes (what the DAG runs)",
    )
    supp_sync.set_defaults(handler=cmd_suppressions_sync)
