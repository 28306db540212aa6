"""`lifecycle run`, `requeue-unknown`, `preview`: one campaign, from the command line."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from lifecycle.cli.arguments import parse_datetime, positive_int
from lifecycle.cli.common import Commands, UsageError, engine_from, known_campaign, settings_from


def cmd_run(args: argparse.Namespace) -> int:
    from lifecycle.core.campaigns import load_campaigns
    from lifecycle.delivery import DeliveryStopped
    from lifecycle.run.campaign import run_campaign
    from lifecycle.run.preflight import PreflightError
    from lifecycle.store.states import RunStatus

    settings = settings_from(args)
    campaigns = load_campaigns(settings.campaigns_dir)
    spec = campaigns.spec(args.campaign)  # its own file's SpecError if that file is invalid
    if spec is None:
        raise UsageError(f"no campaign {args.campaign!r}; known: {', '.join(campaigns.ids)}")
    for path in campaigns.errors:  # another campaign's: it does not stop this one
        print(f"warning: {path} is invalid; campaign {path.stem} cannot run", file=sys.stderr)
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


def print_run(campaign: str, as_of: datetime, counts: dict[str, Any], transport: str) -> None:
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

    known_campaign(args, args.campaign)
    with engine_from(args).begin() as conn:
        count = ledger.requeue_unknown(conn, args.campaign, args.ids or None)
    print(f"{count:,} unknown rows of {args.campaign} planned again; the next run sends them")
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lifecycle.core.campaigns import load_campaigns
    from lifecycle.core.templates import TemplateProblem
    from lifecycle.devtools import preview

    if not args.all and (args.campaign is None or args.customer is None):
        print("preview needs CAMPAIGN --customer ID, or --all", file=sys.stderr)
        return 2
    settings = settings_from(args)
    out = Path(args.out)
    try:
        if args.all:
            pages = preview.preview_all(settings, out, as_of=args.as_of or datetime.now(UTC))
            print(f"{len(pages)} previews (template x locale) in {out}: open {out / 'index.html'}")
            return 0
        campaigns = load_campaigns(settings.campaigns_dir)
        spec = campaigns.spec(args.campaign)
        if spec is None:
            raise UsageError(f"no campaign {args.campaign!r}; known: {', '.join(campaigns.ids)}")
        rendered = preview.preview_customer(
            engine_from(args),
            settings,
            spec,
            args.customer,
            as_of=args.as_of or datetime.now(UTC),
            locale=args.locale,
            occurrence_key=args.occurrence_key,
        )
    except (TemplateProblem, preview.PreviewError) as exc:
        print(exc, file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(rendered.html, encoding="utf-8")
    out.with_suffix(".txt").write_text(rendered.text, encoding="utf-8")
    print(f"subject ({rendered.locale_used}): {rendered.subject}")
    print(f"wrote {out} and {out.with_suffix('.txt')}")
    return 0


def register(commands: Commands) -> None:
    run = commands.add_parser(
        "run",
        help="run one campaign now: plan, deliver, finalize (what the DAG runs)",
        description="The campaign DAG's code path in this process. Prints planned, skipped by "
        "reason, sent, failed and unknown. Exit 1 unless the run succeeded: some emails' fate "
        "is unknown, every email failed, or a dry run found emails that do not render.",
    )
    run.add_argument("campaign", metavar="CAMPAIGN", help="campaign id (include/campaigns/*.yaml)")
    run.add_argument(
        "--as-of",
        type=parse_datetime,
        default=None,
        metavar="DATETIME",
        help="the day the email is seen (coupon expiry, local date); default: now",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="count and render every email; write and send nothing",
    )
    run.add_argument(
        "--limit",
        type=positive_int,
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
        "--id",
        dest="ids",
        type=positive_int,
        action="append",
        metavar="LEDGER_ID",
        help="only these rows",
    )
    requeue.set_defaults(handler=cmd_requeue_unknown)

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
        "--as-of",
        type=parse_datetime,
        default=None,
        metavar="DATETIME",
        help="the day the email is seen (coupon expiry, local date); default: now",
    )
    preview_cmd.add_argument("--out", required=True, metavar="PATH", help="FILE.html or DIR")
    preview_cmd.set_defaults(handler=cmd_preview)
