"""`lifecycle`: the one entry point shared by the Makefile, local debugging and benchmarks.

Every command reads its settings from `LIFECYCLE_*` environment variables (see README);
`--warehouse URL` overrides the warehouse for one call.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from lifecycle.core.config import load_settings
from lifecycle.devtools import seed
from lifecycle.store import warehouse

Handler = Callable[[argparse.Namespace], int]


def parse_datetime(value: str) -> datetime:
    """ISO 8601 date or date-time; a naive value is taken as UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO date-time (e.g. 2026-11-24T09:30:00Z)"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def engine_from(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    url = args.warehouse or load_settings().warehouse_url
    return warehouse.engine_for(url)


# --- db -----------------------------------------------------------------------------------
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


# --- seed ---------------------------------------------------------------------------------
def cmd_seed(args: argparse.Namespace) -> int:
    engine = engine_from(args)
    result = seed.seed(engine, args.customers, seed=args.seed, as_of=args.as_of)
    as_of = f"{result.as_of:%Y-%m-%d %H:%M} UTC"
    print(f"seeded {result.customers:,} customers and {result.orders:,} orders as of {as_of}")
    print_summary(engine)
    return 0


def print_summary(engine) -> None:  # type: ignore[no-untyped-def]
    facts = seed.summary(engine)
    locales = ", ".join(f"{k}: {v:,}" for k, v in sorted(facts["by_locale"].items()))
    print(f"customers: {facts['customers']:,} ({locales})")
    print(f"with marketing consent: {facts['with_consent']:,}")
    if facts["orders"]:
        span = f"{facts['first_order']:%Y-%m-%d} .. {facts['last_order']:%Y-%m-%d}"
        print(f"orders: {facts['orders']:,}, placed {span}")


# --- public endpoints and suppressions -----------------------------------------------------
def cmd_serve_public(args: argparse.Namespace) -> int:
    import uvicorn

    from lifecycle.web.public import standalone_app

    settings = load_settings(**({"warehouse_url": args.warehouse} if args.warehouse else {}))
    print(f"webhook: http://{args.host}:{args.port}/lifecycle/events/sendgrid")
    uvicorn.run(standalone_app(settings), host=args.host, port=args.port, access_log=False)
    return 0


def cmd_suppressions_sync(args: argparse.Namespace) -> int:
    from lifecycle.feedback import suppressions

    settings = load_settings()
    try:
        result = suppressions.sync_with_settings(engine_from(args), settings, datetime.now(UTC))
    except suppressions.SendGridAPIError as exc:
        print(f"suppression sync failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"pulled {result.pulled:,} suppressions from {settings.sendgrid_host} "
        f"({result.added:,} new), pushed {result.pushed:,} unsubscribes, "
        f"{result.requests:,} API requests"
    )
    return 0


# --- delivery (issue 5) --------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from lifecycle.core.campaigns import SpecError, load_campaigns
    from lifecycle.delivery import DeliveryStopped
    from lifecycle.run.campaign import run_campaign
    from lifecycle.run.preflight import PreflightError
    from lifecycle.store.states import RunStatus

    settings = load_settings(**({"warehouse_url": args.warehouse} if args.warehouse else {}))
    try:
        specs = load_campaigns(settings.campaigns_dir)
    except SpecError as exc:
        print(f"invalid campaign spec: {exc}", file=sys.stderr)
        return 2
    spec = specs.get(args.campaign)
    if spec is None:
        print(f"no campaign {args.campaign!r}; known: {', '.join(sorted(specs))}", file=sys.stderr)
        return 2
    as_of = args.as_of or datetime.now(UTC)
    try:
        outcome = run_campaign(
            engine_from(args), spec, settings, as_of=as_of, dry_run=args.dry_run, limit=args.limit
        ).outcome
    except (PreflightError, DeliveryStopped) as exc:
        print(f"{spec.id}: {exc}", file=sys.stderr)
        return 1
    print_run(spec.id, as_of, outcome.counts, settings.chosen_transport())
    succeeded = outcome.status == RunStatus.SUCCESS
    return 0 if succeeded and not outcome.counts.get("render_errors") else 1


def print_run(campaign: str, as_of: datetime, counts: dict, transport: str) -> None:  # type: ignore[type-arg]
    dry = " (dry run: nothing written or sent)" if counts.get("dry_run") else ""
    print(f"{campaign} as of {as_of:%Y-%m-%d %H:%M} UTC via {transport}{dry}")
    print(f"planned: {counts.get('planned', 0):,}")
    skipped = counts.get("skipped") or {}
    reasons = ", ".join(f"{reason}: {n:,}" for reason, n in sorted(skipped.items()))
    print(f"skipped: {sum(skipped.values()):,}" + (f" ({reasons})" if reasons else ""))
    if counts.get("dry_run"):
        print(f"rendered: {counts['rendered']:,}  render errors: {counts['render_errors']:,}")
        for example in counts["render_error_examples"]:
            print(f"  {example}")
        return
    print(
        f"sent: {counts['sent']:,}  failed: {counts['failed']:,}  unknown: {counts['unknown']:,}"
        f"  waiting for the send window: {counts['waiting']:,}"
    )
    if counts["unknown"]:
        print(
            f"{counts['unknown']:,} emails may or may not have reached SendGrid; they are not "
            f"resent automatically. Check SendGrid's activity, then `lifecycle requeue-unknown "
            f"{campaign}` for the ones that never arrived."
        )


def cmd_requeue_unknown(args: argparse.Namespace) -> int:
    from lifecycle.store import ledger

    with engine_from(args).begin() as conn:
        count = ledger.requeue_unknown(conn, args.campaign, args.ids or None)
    print(f"{count:,} unknown rows of {args.campaign} planned again; the next run sends them")
    return 0


def cmd_sink(args: argparse.Namespace) -> int:
    from lifecycle.devtools import sink

    print(f"SendGrid-compatible sink on http://{args.host}:{args.port} (Ctrl-C stops it)")
    print(f"  LIFECYCLE_SENDGRID_HOST=http://{args.host}:{args.port}")
    sink.serve(
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


# --- reports (issue 7) ---------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    import json

    from lifecycle import reporting

    settings = load_settings(**({"warehouse_url": args.warehouse} if args.warehouse else {}))
    report = reporting.build_report(
        engine_from(args),
        settings,
        as_of=args.as_of or datetime.now(UTC),
        campaign_id=args.campaign,
        conversion_days=args.days,
        months=args.months,
    )
    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=2))
    elif args.format == "csv":
        csv_for = {
            "runs": reporting.runs_csv,
            "retention": reporting.retention_csv,
            "cohorts": reporting.cohorts_csv,
        }
        print(csv_for[args.table](report), end="")
    else:
        print(reporting.format_table(report))
    return 0


def cmd_simulate_events(args: argparse.Namespace) -> int:
    from lifecycle.devtools import simulate

    if load_settings().chosen_transport() == "sendgrid" and not args.force:
        print(
            "refusing to simulate events while the SendGrid transport is configured: real "
            "sends get real events from the webhook (use --force for a test warehouse)",
            file=sys.stderr,
        )
        return 2
    result = simulate.simulate_events(
        engine_from(args),
        as_of=args.as_of or datetime.now(UTC),
        seed=args.seed,
        campaign_id=args.campaign,
    )
    kinds = ", ".join(f"{kind}: {n:,}" for kind, n in result.events.items()) or "none"
    print(f"simulated events for {result.sends:,} sent emails ({kinds}); labelled simulated")
    return 0


# --- features and segments (issue 3) ------------------------------------------------------
def cmd_features(args: argparse.Namespace) -> int:
    from lifecycle.core import features

    settings = load_settings(**({"warehouse_url": args.warehouse} if args.warehouse else {}))
    as_of = args.as_of or datetime.now(UTC)
    snapshot = features.materialize(engine_from(args), as_of, settings)
    warnings = ", ".join(f"{k}: {n:,}" for k, n in snapshot.warnings.items()) or "none"
    when = f"{snapshot.as_of:%Y-%m-%d %H:%M} UTC"
    print(f"customer_features: {snapshot.row_count:,} customers as of {when}")
    print(f"warnings: {warnings}")
    return 0


def cmd_segments(args: argparse.Namespace) -> int:
    import pandas as pd

    from lifecycle.core import segments

    settings = load_settings(**({"warehouse_url": args.warehouse} if args.warehouse else {}))
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


# --- templates (issue 4) -------------------------------------------------------------------
def cmd_preview(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lifecycle.core.campaigns import SpecError, load_campaigns
    from lifecycle.core.render import TemplateProblem
    from lifecycle.devtools import preview

    if not args.all and (args.campaign is None or args.customer is None):
        print("preview needs CAMPAIGN --customer ID, or --all", file=sys.stderr)
        return 2
    settings = load_settings(**({"warehouse_url": args.warehouse} if args.warehouse else {}))
    out = Path(args.out)
    try:
        if args.all:
            pages = preview.preview_all(settings, out)
            print(f"{len(pages)} previews (template x locale) in {out}: open {out / 'index.html'}")
            return 0
        spec = load_campaigns(settings.campaigns_dir).get(args.campaign)
        if spec is None:
            print(f"no campaign {args.campaign!r}", file=sys.stderr)
            return 2
        rendered = preview.preview_customer(
            engine_from(args),
            settings,
            spec,
            args.customer,
            as_of=args.as_of or datetime.now(UTC),
            locale=args.locale,
            occurrence_key=args.occurrence_key,
        )
    except (SpecError, TemplateProblem, preview.PreviewError) as exc:
        print(exc, file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(rendered.html, encoding="utf-8")
    out.with_suffix(".txt").write_text(rendered.text, encoding="utf-8")
    print(f"subject ({rendered.locale_used}): {rendered.subject}")
    print(f"wrote {out} and {out.with_suffix('.txt')}")
    return 0


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

    seed_cmd = commands.add_parser(
        "seed",
        help="replace customers and orders with deterministic demo data",
        description="Write a realistic demo population (bulk-loaded). Replaces existing demo rows.",
    )
    seed_cmd.add_argument(
        "--customers", type=int, default=10_000, metavar="N", help="how many (default 10,000)"
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
    serve_public = commands.add_parser(
        "serve-public",
        help="serve the SendGrid event webhook and unsubscribe pages (uvicorn)",
        description="The public app the Airflow plugin mounts at /lifecycle, served alone.",
    )
    serve_public.add_argument("--host", default="127.0.0.1")
    serve_public.add_argument("--port", type=int, default=8090)
    serve_public.set_defaults(handler=cmd_serve_public)

    supp = commands.add_parser("suppressions", help="the suppression list and SendGrid")
    supp_commands = supp.add_subparsers(dest="suppressions_command", required=True)
    supp_sync = supp_commands.add_parser(
        "sync",
        help="pull SendGrid's suppressions, push our unsubscribes (what the DAG runs)",
    )
    supp_sync.set_defaults(handler=cmd_suppressions_sync)

    run = commands.add_parser(
        "run",
        help="run one campaign now: plan, deliver, finalize (what the DAG runs)",
        description="The campaign DAG's code path in this process. Prints planned, skipped by "
        "reason, sent, failed and unknown. Exit 1 unless the run succeeded: some emails' fate "
        "is unknown, every email failed, or a dry run found emails that do not render.",
    )
    run.add_argument("campaign", metavar="CAMPAIGN", help="campaign id (include/campaigns/*.yaml)")
    run.add_argument(
        "--as-of", type=parse_datetime, default=None, metavar="DATETIME", help="default: now"
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="count and render every email; write and send nothing",
    )
    run.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="send at most N new emails; rows of earlier runs wait for a run without a limit",
    )
    run.set_defaults(handler=cmd_run)

    requeue = commands.add_parser(
        "requeue-unknown",
        help="plan again emails whose fate is unknown (after checking they never arrived)",
    )
    requeue.add_argument("campaign", metavar="CAMPAIGN")
    requeue.add_argument(
        "--id", dest="ids", type=int, action="append", metavar="LEDGER_ID", help="only these rows"
    )
    requeue.set_defaults(handler=cmd_requeue_unknown)

    sink_cmd = commands.add_parser(
        "sink",
        help="local SendGrid-compatible server (mail/send + suppressions) with fault injection",
    )
    sink_cmd.add_argument("--host", default="127.0.0.1")
    sink_cmd.add_argument("--port", type=int, default=3025)
    sink_cmd.add_argument(
        "--api-key", action="append", default=None, help="accepted key (default: any key)"
    )
    sink_cmd.add_argument("--latency-ms", type=float, default=0.0, help="added to every send")
    sink_cmd.add_argument("--rate-429", type=float, default=0.0, metavar="P")
    sink_cmd.add_argument("--rate-5xx", type=float, default=0.0, metavar="P")
    sink_cmd.add_argument("--rate-drop", type=float, default=0.0, metavar="P")
    sink_cmd.add_argument("--rate-slow", type=float, default=0.0, metavar="P")
    sink_cmd.add_argument("--slow-ms", type=float, default=5000.0)
    sink_cmd.add_argument("--seed", type=int, default=None, help="fault randomness seed")
    sink_cmd.add_argument(
        "--no-bodies", action="store_true", help="keep only recipients and ids (benchmarks)"
    )
    sink_cmd.set_defaults(handler=cmd_sink)

    report = commands.add_parser(
        "report",
        help="campaign funnels, conversions, holdout uplift and monthly retention KPIs",
        description="The same figures as the Campaigns dashboard and the retention_report DAG.",
    )
    report.add_argument("--campaign", metavar="ID", help="only this campaign's runs")
    report.add_argument("--format", choices=("table", "csv", "json"), default="table")
    report.add_argument(
        "--table",
        choices=("runs", "retention", "cohorts"),
        default="runs",
        help="which table --format csv prints (default runs)",
    )
    report.add_argument(
        "--days", type=int, default=7, metavar="N", help="conversion window after a send (7)"
    )
    report.add_argument("--months", type=int, default=12, metavar="N", help="KPI months (12)")
    report.add_argument(
        "--as-of", type=parse_datetime, default=None, metavar="DATETIME", help="default: now"
    )
    report.set_defaults(handler=cmd_report)

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
        "--sample", type=int, default=3, metavar="N", help="sample rows per segment (default 3)"
    )
    segments_cmd.set_defaults(handler=cmd_segments)

    preview_cmd = commands.add_parser(
        "preview",
        help="render a campaign's email for a customer, or every template x locale",
        description="CAMPAIGN --customer ID --out FILE.html renders that customer's email "
        "(their name, locale, timezone and features; nothing is sent or issued). "
        "--all --out DIR renders every template in every locale with sample data, "
        "with DIR/index.html.",
    )
    preview_cmd.add_argument("campaign", nargs="?", metavar="CAMPAIGN")
    preview_cmd.add_argument("--all", action="store_true", help="every template x locale")
    preview_cmd.add_argument("--customer", type=int, metavar="ID")
    preview_cmd.add_argument("--locale", metavar="L", help="override the customer's locale")
    preview_cmd.add_argument(
        "--occurrence-key", metavar="KEY", help="e.g. day3 for onboarding (default: the first)"
    )
    preview_cmd.add_argument(
        "--as-of", type=parse_datetime, default=None, metavar="DATETIME", help="default: now"
    )
    preview_cmd.add_argument("--out", required=True, metavar="PATH", help="FILE.html or DIR")
    preview_cmd.set_defaults(handler=cmd_preview)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
