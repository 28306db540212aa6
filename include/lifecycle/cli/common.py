"""What every command shares: the `--as-of` parser and the warehouse and settings of a call."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import TypeAlias

from sqlalchemy import Engine

from lifecycle.core.config import Settings, load_settings
from lifecycle.store import warehouse

# What `add_subparsers` returns; each topic module adds its commands to it.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def parse_datetime(value: str) -> datetime:
    """ISO 8601 date or date-time; a naive value is taken as UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO date-time (e.g. 2026-11-24T09:30:00Z)"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def settings_from(args: argparse.Namespace) -> Settings:
    """The environment's settings, with `--warehouse` if it was given."""
    return load_settings(**({"warehouse_url": args.warehouse} if args.warehouse else {}))


def engine_from(args: argparse.Namespace) -> Engine:
    return warehouse.engine_for(settings_from(args).warehouse_url)
