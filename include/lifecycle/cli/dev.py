"""`lifecycle seed`, `sink`, `simulate-events`: development and demo tools."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from sqlalchemy import Engine

from lifecycle.cli.arguments import milliseconds, parse_datetime, port, positive_int, probability
from lifecycle.cli.common import Commands, engine_from, known_campaign, settings_from
from lifecycle.cli.progress import working
from lifecycle.devtools import seed


def cmd_seed(args: argparse.Namespace) -> int:
    engine = engine_from(args)
    with working(f"seeding {args.customers:,} customers and their orders"):
        result = seed.seed(engine, args.customers, seed=args.seed, as_of=args.as_of)
    as_of = f"{result.as_of:%Y-%m-%d %H:%M} UTC"
    print(f"seeded {result.customers:,} customers and {result.orders:,} orders as of {as_of}")
    print_summary(engine)
    return 0


def print_summary(engine: Engine) -> None:
    facts = seed.summary(engine)
    locales = ", ".join(
        f"{k}: {v:,}" for k, v in sorted(facts.by_locale.items(), key=lambda item: str(item[0]))
    )
    print(f"customers: {facts.customers:,} ({locales})")
    print(f"with marketing consent: {facts.with_consent:,}")
    if facts.orders:
        span = f"{facts.first_order:%Y-%m-%d} .. {facts.last_order:%Y-%m-%d}"
        print(f"orders: {facts.orders:,}, placed {span}")


def cmd_sink(args: argparse.Namespace) -> int:
    from lifecycle.devtools.sink.app import serve

    print(f"SendGrid-compatible sink on http://{args.host}:{args.port} (Ctrl-C stops it)")
    print(f"  LIFECYCLE_SENDGRID_HOST=http://{args.host}:{args.port}")
    serve(
        args.port,
        args.host,
        api_keys=args.api_key,
        keep_bodies=not args.no_bodies,
        seed=args.seed,
        latency_ms=args.latency_ms,
        rate_429=args.rate_429,
        rate_5xx=args.rate_5xx,
        rate_drop=args.rate_drop,
        rate_slow=args.rate_slow,
        slow_ms=args.slow_ms,
    )
    return 0


def cmd_simulate_events(args: argparse.Namespace) -> int:
    from lifecycle.devtools import simulate

    if settings_from(args).chosen_transport() == "sendgrid" and not args.force:
        print(
            "refusing to simulate events while the SendGrid transport is configured: real "
            "sends get real events from the webhook (use --force for a test warehouse)",
            file=sys.stderr,
        )
        return 2
    if args.campaign is not None:
        known_campaign(args, args.campaign, with_runs=True)
    result = simulate.simulate_events(
        engine_from(args),
        as_of=args.as_of or datetime.now(UTC),
        seed=args.seed,
        campaign_id=args.campaign,
    )
    kinds = ", ".join(f"{kind}: {n:,}" for kind, n in result.events.items()) or "none"
    print(f"simulated events for {result.sends:,} sent emails ({kinds}); labelled simulated")
    return 0


def register(commands: Commands) -> None:
    seed_cmd = commands.add_parser(
        "seed",
        help="replace customers and orders with deterministic demo data",
        description="Write a realistic demo population (bulk-loaded). Replaces existing demo rows.",
    )
    seed_cmd.add_argument(
        "--customers",
        type=positive_int,
        default=10_000,
        metavar="N",
        help="how many (default 10,000)",
    )
    seed_cmd.add_argument(
        "--seed", type=int, default=42, metavar="S", help="random seed (default 42)"
    )
    seed_cmd.add_argument(
        "--as-of",
        type=parse_datetime,
        default=None,
        metavar="DATETIME",
        help="'now' of the data (default: now)",
    )
    seed_cmd.set_defaults(handler=cmd_seed)

    sink_cmd = commands.add_parser(
        "sink",
        help="local SendGrid-compatible server (mail/send + suppressions) with fault injection",
    )
    sink_cmd.add_argument("--host", default="127.0.0.1")
    sink_cmd.add_argument("--port", type=port, default=3025)
    sink_cmd.add_argument(
        "--api-key", action="append", default=None, help="accepted key (default: any key)"
    )
    sink_cmd.add_argument(
        "--latency-ms", type=milliseconds, default=0.0, help="added to every send"
    )
    sink_cmd.add_argument("--rate-429", type=probability, default=0.0, metavar="P")
    sink_cmd.add_argument("--rate-5xx", type=probability, default=0.0, metavar="P")
    sink_cmd.add_argument("--rate-drop", type=probability, default=0.0, metavar="P")
    sink_cmd.add_argument("--rate-slow", type=probability, default=0.0, metavar="P")
    sink_cmd.add_argument("--slow-ms", type=milliseconds, default=5000.0)
    sink_cmd.add_argument("--seed", type=int, default=None, help="fault randomness seed")
    sink_cmd.add_argument(
        "--no-bodies", action="store_true", help="keep only recipients and ids (benchmarks)"
    )
    sink_cmd.set_defaults(handler=cmd_sink)

    simulate_cmd = commands.add_parser(
        "simulate-events",
        help="demo only: plausible delivered/open/click/bounce events for outbox sends",
        description="Adds engagement events marked simulated=true for sent emails that have "
        "none, deterministic by seed. The dashboard labels them as simulated.",
    )
    simulate_cmd.add_argument("--campaign", metavar="ID")
    simulate_cmd.add_argument("--seed", type=int, default=7)
    simulate_cmd.add_argument(
        "--as-of", type=parse_datetime, default=None, metavar="DATETIME", help="default: now"
    )
    simulate_cmd.add_argument("--force", action="store_true", help="even with SendGrid configured")
    simulate_cmd.set_defaults(handler=cmd_simulate_events)
