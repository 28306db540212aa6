"""Finalize: once every delivery attempt has ended, count the run's outcomes and judge it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from lifecycle.core.campaigns import CampaignSpec
from lifecycle.run.clock import now
from lifecycle.store import ledger, runs
from lifecycle.store.states import RunStatus


@dataclass(frozen=True)
class RunOutcome:
    status: RunStatus
    # As stored on the run row: planned, sent, failed, unknown, sending, pending, waiting,
    # skipped {reason: n}, and `stopped` (why) for a stopped run; a dry run's own counts.
    counts: dict[str, Any]


def finalize(engine: Engine, spec: CampaignSpec, *, run_id: int) -> RunOutcome:
    """The run's outcome, its counts stored on its campaign_runs row.

    Runs after every delivery attempt has ended, however it ended: rows still `sending` become
    `unknown`. Status: `stopped` when SendGrid refused the key or sender (`stopped` says why);
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
        counts = ledger.run_counts(conn, run_id, run.as_of)
        if run.status == RunStatus.STOPPED:
            status, counts["stopped"] = RunStatus.STOPPED, (run.counts or {}).get("stopped")
        elif counts["unknown"] or counts["pending"] or (counts["failed"] and not counts["sent"]):
            status = RunStatus.FAILED
        else:
            status = RunStatus.SUCCESS
        runs.finish_run(conn, run_id, counts, status, now())
    return RunOutcome(status, counts)
