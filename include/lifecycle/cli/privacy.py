"""`lifecycle privacy export|erase --email ADDRESS`: answer a person's request about their data."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from lifecycle.cli.common import Commands, UsageError, engine_from, settings_from


def _address(args: argparse.Namespace) -> str:
    email = args.email.strip()
    if "@" not in email:
        raise UsageError(f"--email {args.email!r} is no email address")
    return email


def cmd_export(args: argparse.Namespace) -> int:
    from lifecycle.feedback import privacy

    held = privacy.export(engine_from(args), settings_from(args), _address(args))
    print(json.dumps(held, indent=2, ensure_ascii=False, sort_keys=True))
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    from lifecycle.feedback import privacy

    changed = privacy.erase(
        engine_from(args), settings_from(args), _address(args), datetime.now(UTC)
    )
    for table, count in changed.items():
        print(f"{table}: {count:,} rows {privacy.TABLES[table]}d")
    print("suppressions: the address is kept only as a hash, so it is never mailed again")
    return 0


def register(commands: Commands) -> None:
    privacy = commands.add_parser(
        "privacy",
        help="a person's request: export or erase what the marketing tables hold about them",
        description=(
            "Export or erase everything the marketing tables hold about one email address "
            "(matched trimmed and case-insensitively). The source tables (customers, orders) "
            "belong to the company and are never touched."
        ),
    )
    actions = privacy.add_subparsers(dest="privacy_command", required=True)
    export = actions.add_parser(
        "export", help="print everything held about the address as JSON (stdout)"
    )
    export.add_argument("--email", required=True, metavar="ADDRESS")
    export.set_defaults(handler=cmd_export)
    erase = actions.add_parser(
        "erase",
        help="delete or pseudonymise the address's rows in one transaction; keep a hashed "
        "suppression so it is never mailed again",
    )
    erase.add_argument("--email", required=True, metavar="ADDRESS")
    erase.set_defaults(handler=cmd_erase)
