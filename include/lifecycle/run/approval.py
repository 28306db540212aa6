"""Approval: what a person sees before a planned run sends, and what their answer does.

Between plan and deliver a campaign with `approval: required` waits for a person (the DAG's
approval step). `summarize` says what the run would send; `sample_emails` renders a few of its
planned emails exactly as they would go out (with a sample coupon: nothing is issued);
`close` ends a run that was rejected or whose approval expired: its planned rows are released
(deleted, so a later run plans them afresh) and nothing is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import Settings
from lifecycle.run.clock import now
from lifecycle.run.compose import Composer, Email, sample_coupon
from lifecycle.run.rows import from_ledger
from lifecycle.store import ledger, runs
from lifecycle.store.states import RunStatus, SkipReason

CLOSED = (RunStatus.REJECTED, RunStatus.EXPIRED)


@dataclass(frozen=True)
class ApprovalSummary:
    run_id: int
    audience: int  # customers the segment returned this run: planned + skipped
    planned: int  # emails the run will send: due now + waiting
    due_now: int
    waiting: int  # outside the customer's send window: a later run sends them
    skipped: dict[str, int]  # by reason
    holdout: int
    coupons: int  # coupons issued if every planned email goes out
    discount_percent: float | None
    subjects: list[str]  # a few rendered subject lines
    status: RunStatus

    @property
    def needs_answer(self) -> bool:
        """A real run still running with something to send; otherwise there is nothing to ask."""
        return self.status == RunStatus.RUNNING and self.planned > 0


def summarize(
    engine: Engine, spec: CampaignSpec, settings: Settings, *, run_id: int, samples: int = 3
) -> ApprovalSummary:
    with engine.connect() as conn:
        run = runs.get_run(conn, run_id)
        counts = ledger.run_counts(conn, run_id, run.as_of)
    skipped: dict[str, int] = counts["skipped"]
    planned = counts["pending"] + counts["waiting"]
    status = RunStatus(run.status)
    emails = sample_emails(engine, spec, settings, run_id=run_id, limit=samples)
    return ApprovalSummary(
        run_id=run_id,
        audience=planned + sum(skipped.values()),
        planned=planned,
        due_now=counts["pending"],
        waiting=counts["waiting"],
        skipped=skipped,
        holdout=skipped.get(SkipReason.HOLDOUT, 0),
        coupons=planned if spec.coupon else 0,
        discount_percent=spec.coupon.discount_percent if spec.coupon else None,
        subjects=[email.rendered.subject for email in emails],
        status=RunStatus.SUCCESS if run.dry_run else status,
    )


def sample_emails(
    engine: Engine, spec: CampaignSpec, settings: Settings, *, run_id: int, limit: int
) -> list[Email]:
    """The run's first `limit` planned emails, rendered as they would be sent."""
    with engine.connect() as conn:
        run = runs.get_run(conn, run_id)
        rows = ledger.planned_rows(conn, run_id, limit)
    composer, coupon = Composer(spec, settings, run.as_of), sample_coupon(spec, run.as_of)
    return [composer.email(from_ledger(row), coupon) for row in rows]


def close(engine: Engine, *, run_id: int, status: RunStatus, decided_by: str | None) -> int:
    """End a run that must not send (`rejected` or `expired`): release its planned rows and
    record the outcome. Returns the rows released; closing twice releases nothing more."""
    if status not in CLOSED:
        raise ValueError(f"a run closes as one of {[s.value for s in CLOSED]}, not {status!r}")
    with engine.begin() as conn:
        run = runs.get_run(conn, run_id)
        if run.status != RunStatus.RUNNING:  # closed already, or finished otherwise
            return 0
        released = ledger.release_planned(conn, run_id)
        counts: dict[str, Any] = ledger.run_counts(conn, run_id, run.as_of)
        counts.update(released=released, decided_by=decided_by)
        runs.finish_run(conn, run_id, counts, status, now())
    return released
