"""`lifecycle db`, `features`, `segments`: the warehouse's tables, features and segments."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from lifecycle.cli.arguments import non_negative_int, parse_datetime
from lifecycle.cli.common import Commands, engine_from, settings_from
from lifecycle.cli.progress import working
from lifecycle.store import warehouse


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    engine = engine_from(args)
    warehouse.upgrade(engine, args.revision)
    print(f"warehouse at revision {warehouse.current_revision(engine)} ({engine.url!r})")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    engine = engine_from(args)
    current, head = warehouse.current_revision(engine), warehouse.head_revision()
    print(f"current: {current or '(empty)'}  head: {head}")
    return 0 if current == head else 1


def cmd_db_downgrade(args: argparse.Namespace) -> int:
    engine = engine_from(args)
    warehouse.downgrade(engine, args.revision)
    print(f"warehouse at revision {warehouse.current_revision(engine) or '(empty)'}")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from lifecycle.core import features

    settings = settings_from(args)
    as_of = args.as_of or datetime.now(UTC)
    with working(f"computing every customer's features as of {as_of:%Y-%m-%d %H:%M} UTC"):
        snapshot = features.materialize(engine_from(args), as_of, settings)
    warnings = ", ".join(f"{k}: {n:,}" for k, n in snapshot.warnings.items()) or "none"
    when = f"{snapshot.as_of:%Y-%m-%d %H:%M} UTC"
    print(f"customer_features: {snapshot.row_count:,} customers as of {when}")
    print(f"warnings: {warnings}")
    return 0


def cmd_segments(args: argparse.Namespace) -> int:
    import pandas as pd

    from lifecycle.core import segments

    settings = settings_from(args)
    as_of = args.as_of or datetime.now(UTC)
    try:
        chosen = [segments.load_segment(name) for name in args.segment or segments.builtin_names()]
    except segments.SegmentError as exc:
        print(exc, file=sys.stderr)
        return 2
    engine = engine_from(args)
    print(f"segments as of {as_of:%Y-%m-%d %H:%M} UTC (customers' local dates); nothing is sent")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        for segment in chosen:
            members = segments.count(engine, segment, as_of, settings)
            print(f"\n{segment.name}: {members:,} ({segment.description})")
            if members and args.sample:
                print(
                    segments.sample(engine, segment, as_of, settings, args.sample).to_string(
                        index=False
                    )
                )
    return 0


def register(commands: Commands) -> None:
    db = commands.add_parser("db", help="create or upgrade the marketing tables (Alembic)")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = db_commands.add_parser("upgrade", help="upgrade to the latest revision (or --revision)")
    up.add_argument("--revision", default="head")
    up.set_defaults(handler=cmd_db_upgrade)
    current = db_commands.add_parser("current", help="show the revision; exit 1 if not at head")
    current.set_defaults(handler=cmd_db_current)
    down = db_commands.add_parser("downgrade", help="downgrade to REVISION ('base' drops all)")
    down.add_argument("revision")
    down.set_defaults(handler=cmd_db_downgrade)

    features_cmd = commands.add_parser(
        "features",
        help="materialize the customer_features snapshot",
        description="Compute every customer's features at --as-of in the warehouse and replace "
        "the customer_features snapshot (RFM scores included).",
    )
    features_cmd.add_argument(
        "--as-of", type=parse_datetime, default=None, metavar="DATETIME", help="default: now"
    )
    features_cmd.set_defaults(handler=cmd_features)

    segments_cmd = commands.add_parser(
        "segments",
        help="count segment members and show a sample; sends nothing",
        description="Members of the built-in segments (include/segments/) at --as-of, "
        "evaluated in each customer's own timezone.",
    )
    segments_cmd.add_argument(
        "--as-of", type=parse_datetime, default=None, metavar="DATETIME", help="default: now"
    )
    segments_cmd.add_argument(
        "--segment", action="append", metavar="NAME", help="only this segment (repeatable)"
    )
    segments_cmd.add_argument(
        "--sample",
        type=non_negative_int,
        default=3,
        metavar="N",
        help="sample rows per segment (default 3)",
    )
    segments_cmd.set_defaults(handler=cmd_segments)
