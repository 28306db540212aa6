"""`lifecycle run`, `requeue-unknown`, `preview`: one campaign, from the command line."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from lifecycle.cli.arguments import parse_datetime, positive_int
from lifecycle.cli.common import Commands, UsageError, engine_from, known_campaign, settings_from
from lifecycle.cli.progress import steps

if TYPE_CHECKING:
    from lifecycle.store.unknown import UnknownStates


def cmd_run(args: argparse.Namespace) -> int:
    from lifecycle.core.campaigns import load_campaigns
    from lifecycle.delivery import DeliveryStopped
    from lifecycle.run.campaign import run_campaign
    from lifecycle.run.draft import DraftCampaign
    from lifecycle.run.preflight import PreflightError
    from lifecycle.store.states import RunStatus

    settings = settings_from(args)
    campaigns = load_campaigns(settings.campaigns_dir, settings.templates_dir)
    spec = campaigns.spec(args.campaign)  # its own file's SpecError if that file is invalid
    if spec is None:
        raise UsageError(f"no campaign {args.campaign!r}; known: {', '.join(campaigns.ids)}")
    for path in campaigns.errors:  # another campaign's: it does not stop this one
        print(f"warning: {path} is invalid; campaign {path.stem} cannot run", file=sys.stderr)
    as_of = args.as_of or datetime.now(UTC)
    try:
        with steps(f"{spec.id}: delivering batches") as advance:
            outcome = run_campaign(
                engine_from(args),
                spec,
                settings,
                as_of=as_of,
                dry_run=args.dry_run,
                limit=args.limit,
                on_batch=advance,
            ).outcome
    except DraftCampaign as exc:
        print(exc, file=sys.stderr)
        return 1
    except (PreflightError, DeliveryStopped) as exc:
        print(f"{spec.id}: {exc}", file=sys.stderr)
        return 1
    print_run(spec.id, as_of, outcome.counts, settings.chosen_transport())
    succeeded = outcome.status == RunStatus.SUCCESS
    return 0 if succeeded and not outcome.counts.get("render_errors") else 1


def print_run(campaign: str, as_of: datetime, counts: dict[str, Any], transport: str) -> None:
    from lifecycle.run.finalize import unknown_hint

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
    if hint := unknown_hint(campaign, counts):
        print(hint)


def cmd_requeue_unknown(args: argparse.Namespace) -> int:
    from lifecycle.run.clock import now
    from lifecycle.store import unknown

    known_campaign(args, args.campaign)
    settings = settings_from(args)
    quiet = settings.requeue_quiet_period()
    # Rows attempted after the cutoff may still get their events; None: no cutoff applies.
    cutoff = now() - quiet if quiet is not None and not args.include_recent else None
    engine = engine_from(args)
    with engine.begin() as conn:
        unknown.resolve(conn, campaign_id=args.campaign)  # events stored meanwhile
        found = unknown.states(
            conn, campaign_id=args.campaign, requeueable_before=now() - quiet if quiet else None
        )
        eligible = unknown.unresolved_ids(conn, args.campaign, attempted_before=cutoff)
    if quiet is None and not args.ids:
        raise UsageError(
            f"{found.unresolved:,} unknown emails of {args.campaign}, and no event webhook is "
            "configured (LIFECYCLE_SENDGRID_WEBHOOK_PUBLIC_KEY) to show which never reached "
            "SendGrid: nothing requeued",
            hint="check SendGrid's Email Activity (custom arg send_id), then "
            f"`lifecycle requeue-unknown {args.campaign} --id LEDGER_ID` for those that never "
            "arrived",
        )
    chosen = sorted(set(args.ids) & set(eligible)) if args.ids else eligible
    print(_requeue_plan(args, found, quiet, len(chosen)))
    for line in _id_lines(chosen):
        print(line)
    if args.ids and len(chosen) < len(set(args.ids)):
        left = sorted(set(args.ids) - set(chosen))
        why = "not unknown" + (" or attempted within the quiet period" if cutoff else "")
        print(f"left alone ({why}): {', '.join(map(str, left))}")
    if not chosen:
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("nothing requeued: confirm with --yes when not at a terminal")
        if input(f"Plan these {len(chosen):,} emails again? [y/N] ").strip().lower() != "y":
            print("nothing requeued")
            return 1
    with engine.begin() as conn:
        count = unknown.requeue(conn, args.campaign, chosen, attempted_before=cutoff)
    print(f"{count:,} unknown rows of {args.campaign} planned again; the next run sends them")
    return 0


def _requeue_plan(
    args: argparse.Namespace, found: UnknownStates, quiet: timedelta | None, chosen: int
) -> str:
    hours = f"{quiet.total_seconds() / 3600:g} h" if quiet else ""
    states = (
        f"{args.campaign}: {found.resolved:,} once-unknown emails resolved as sent from "
        f"SendGrid's events; {found.awaiting_events:,} unknown awaiting events"
        + (f" (attempted less than {hours} ago)" if quiet else " (no webhook to wait for)")
        + f"; {found.requeueable:,} requeue-able"
        + (f" (no event {hours} after the attempt)" if quiet else "")
    )
    if args.ids:
        target = "of the given ids"
    elif args.include_recent:
        target = "unknown, including those still awaiting events (--include-recent)"
    else:
        target = "requeue-able"
    return f"{states}\nto plan again: {chosen:,} ({target})"


def _id_lines(ids: list[int], per_line: int = 20) -> list[str]:
    return [
        "  ids: " + ", ".join(map(str, ids[start : start + per_line]))
        for start in range(0, len(ids), per_line)
    ]


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
        "is unknown, every email failed, or a dry run found emails that do not render. A draft "
        "campaign (no `status: live` in its spec) only takes --dry-run: a real run of it stops "
        "before planning.",
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
        help="count and render every email; write and send nothing (works on a draft)",
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
        help="plan again emails whose fate is unknown and that no SendGrid event ever showed",
        description="Emails whose fate is unknown (a crash, a timeout, a 504) are resolved as "
        "sent by SendGrid's events. With the signed event webhook configured, those still "
        "without any event LIFECYCLE_UNKNOWN_QUIET_HOURS (24) after their attempt never reached "
        "SendGrid: by default only they are planned again. Prints what it will do, then asks "
        "(--yes when not at a terminal). Without a webhook, only rows named with --id.",
    )
    requeue.add_argument("campaign", metavar="CAMPAIGN")
    requeue.add_argument(
        "--id",
        dest="ids",
        type=positive_int,
        action="append",
        metavar="LEDGER_ID",
        help="only these rows (repeatable); the only way without a webhook",
    )
    requeue.add_argument(
        "--include-recent",
        action="store_true",
        help="also rows attempted within the quiet period (their events may still come)",
    )
    requeue.add_argument("--yes", action="store_true", help="do not ask for confirmation")
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
