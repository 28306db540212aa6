"""`lifecycle report`: funnels, conversions, uplift and retention KPIs."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from lifecycle.cli.arguments import parse_datetime, window_days, window_months
from lifecycle.cli.common import Commands, engine_from, known_campaign, settings_from


def cmd_report(args: argparse.Namespace) -> int:
    import json

    from lifecycle.reporting import export
    from lifecycle.reporting.report import build_report

    settings = settings_from(args)
    if args.campaign is not None:
        known_campaign(args, args.campaign, with_runs=True)
    report = build_report(
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
            "runs": export.runs_csv,
            "retention": export.retention_csv,
            "cohorts": export.cohorts_csv,
            "variants": export.variants_csv,
            "surveys": export.surveys_csv,
        }
        print(csv_for[args.table](report), end="")
    else:
        print(export.format_table(report))
    return 0


def register(commands: Commands) -> None:
    report = commands.add_parser(
        "report",
        help="campaign funnels, conversions, holdout uplift, retention KPIs and survey NPS",
        description="The same figures as the Campaigns dashboard and the retention_report DAG.",
    )
    report.add_argument("--campaign", metavar="ID", help="only this campaign's runs")
    report.add_argument("--format", choices=("table", "csv", "json"), default="table")
    report.add_argument(
        "--table",
        choices=("runs", "retention", "cohorts", "variants", "surveys"),
        default="runs",
        help="which table --format csv prints (default runs)",
    )
    report.add_argument(
        "--days",
        type=window_days,
        default=7,
        metavar="N",
        help="conversion window after a send (7)",
    )
    report.add_argument(
        "--months", type=window_months, default=12, metavar="N", help="KPI months (12)"
    )
    report.add_argument(
        "--as-of", type=parse_datetime, default=None, metavar="DATETIME", help="default: now"
    )
    report.set_defaults(handler=cmd_report)
