"""A whole campaign run in this process (`lifecycle run`): the phases the DAG runs as tasks."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine

from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import Settings
from lifecycle.run.clock import utc
from lifecycle.run.deliver import deliver
from lifecycle.run.draft import refuse_draft
from lifecycle.run.finalize import RunOutcome, finalize
from lifecycle.run.plan import abandon, plan
from lifecycle.run.preflight import PreflightError, preflight


@dataclass(frozen=True)
class CampaignRun:
    run_id: int
    outcome: RunOutcome


def run_campaign(
    engine: Engine,
    spec: CampaignSpec,
    settings: Settings,
    *,
    as_of: datetime,
    run_key: str | None = None,
    dry_run: bool = False,
    limit: int | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> CampaignRun:
    """preflight → plan → deliver every batch → finalize. The run key defaults to one per
    moment, so running the same moment again finishes that run instead of starting another.
    A real run of a draft campaign raises `DraftCampaign` before anything else."""
    refuse_draft(spec, dry_run=dry_run)
    as_of = utc(as_of)
    run_key = run_key or f"cli{'_dry' if dry_run else ''}__{as_of:%Y-%m-%dT%H:%M:%S}"
    if spec.needs_approval and not dry_run:
        raise PreflightError(
            f"campaign {spec.id} needs approval before it sends: trigger its Airflow DAG "
            f"{spec.dag_id} (an approver answers there), or rehearse it here with --dry-run"
        )
    preflight(engine, spec, settings, as_of=as_of)
    try:
        planned = plan(
            engine, spec, settings, run_key=run_key, as_of=as_of, dry_run=dry_run, limit=limit
        )
    except BaseException:
        # The run row is finished as failed, never left `running` (as the DAG's finalize does).
        # If even that fails (the warehouse is gone), the planning error is the one to report.
        with contextlib.suppress(Exception):
            abandon(engine, spec, run_key=run_key)
        raise
    attempt = f"{run_key}/{uuid.uuid4().hex[:8]}"
    try:
        for done, batch in enumerate(planned.batches, start=1):
            deliver(engine, spec, settings, run_id=planned.run_id, batch=batch, attempt=attempt)
            if on_batch is not None:  # progress: batches delivered, of how many
                on_batch(done, len(planned.batches))
    finally:
        outcome = finalize(engine, spec, run_id=planned.run_id, settings=settings)
    return CampaignRun(planned.run_id, outcome)
