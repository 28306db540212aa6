"""Finalize: once every delivery attempt has ended, count the run's outcomes and judge it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import Settings
from lifecycle.run.clock import now
from lifecycle.store import ledger, runs, unknown
from lifecycle.store.states import RunStatus


@dataclass(frozen=True)
class RunOutcome:
    status: RunStatus
    # As stored on the run row: planned, sent, failed, unknown, sending, pending, waiting,
    # skipped {reason: n}, unknown_states {resolved, awaiting_events, requeueable,
    # quiet_hours (None: no webhook)}, and `stopped` (why) for a stopped run; a dry run's own
    # counts.
    counts: dict[str, Any]


def finalize(
    engine: Engine, spec: CampaignSpec, *, run_id: int, settings: Settings | None = None
) -> RunOutcome:
    """The run's outcome, its counts stored on its campaign_runs row.

    Runs after every delivery attempt has ended, however it ended: rows still `sending` become
    `unknown`, and `unknown` rows whose SendGrid events already arrived become `sent`
    (`store.unknown`; `settings` says whether a webhook will bring more). Status: `stopped`
    when SendGrid refused the key or sender (`stopped` says why);
    `failed` when any row's fate is unknown, due rows were left undelivered (a delivery task
    failed), or nothing could be sent although something was due; else `success`. A dry run
    was finalized when it was planned, a rejected or expired one when its approver answered
    (`run.approval.close`): their outcome is read back.
    """
    with engine.begin() as conn:
        run = runs.get_run(conn, run_id)
        if run.dry_run or run.status in (RunStatus.REJECTED, RunStatus.EXPIRED):
            return RunOutcome(RunStatus(run.status), run.counts or {})
        ledger.mark_run_interrupted(conn, run_id)
        unknown.resolve(conn, run_id=run_id)
        counts = ledger.run_counts(conn, run_id, run.as_of)
        quiet = settings.requeue_quiet_period() if settings else None
        found = unknown.states(
            conn, run_id=run_id, requeueable_before=now() - quiet if quiet else None
        )
        hours = quiet.total_seconds() / 3600 if quiet else None
        counts["unknown_states"] = {**found.to_dict(), "quiet_hours": hours}
        if run.status == RunStatus.STOPPED:
            status, counts["stopped"] = RunStatus.STOPPED, (run.counts or {}).get("stopped")
        elif counts["unknown"] or counts["pending"] or (counts["failed"] and not counts["sent"]):
            status = RunStatus.FAILED
        else:
            status = RunStatus.SUCCESS
        runs.finish_run(conn, run_id, counts, status, now())
    return RunOutcome(status, counts)


def unknown_hint(campaign_id: str, counts: dict[str, Any]) -> str:
    """What the run's `unknown` rows are waiting for and the safe next step ("" if none)."""
    states = counts.get("unknown_states") or {}
    resolved = states.get("resolved", 0)
    done = f"{resolved:,} resolved as sent from SendGrid's events; " if resolved else ""
    if not counts.get("unknown"):
        return done.removesuffix("; ")
    hours = states.get("quiet_hours")
    if hours is None:
        return (
            f"{done}{counts['unknown']:,} emails may or may not have reached SendGrid and no "
            "event webhook is configured to tell: they are never resent automatically. Check "
            "SendGrid's Email Activity (custom arg send_id), then `lifecycle requeue-unknown "
            f"{campaign_id} --id LEDGER_ID` for each one that never arrived"
        )
    return (
        f"{done}{counts['unknown']:,} emails may or may not have reached SendGrid: "
        f"{states.get('awaiting_events', 0):,} awaiting SendGrid's events (an event marks them "
        f"sent), {states.get('requeueable', 0):,} requeue-able (no event {hours:g} h after "
        f"their attempt). They are never resent automatically; `lifecycle requeue-unknown "
        f"{campaign_id}` shows and then requeues only the requeue-able ones"
    )
