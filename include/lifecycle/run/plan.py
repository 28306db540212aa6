"""Plan: evaluate the audience and the policies, write the ledger, cut the due rows into batches.

`plan` upserts the run row on (campaign, run key) and inserts ledger rows with ON CONFLICT DO
NOTHING: the same run key gives the same run, and never a second row for an email, so a plan
can be retried at will. Before planning new rows it takes over earlier runs' rows that are due
now (waiting for the send window, or a retryable failure). A dry run plans the same way but
renders instead of writing (`dry_run.DryRun`).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import pandas as pd
from sqlalchemy import Connection, Engine

from lifecycle.core import addresses, policies, segments, variants
from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import Settings
from lifecycle.run.clock import now, utc
from lifecycle.run.dry_run import DryRun
from lifecycle.run.rows import stored_context
from lifecycle.store import ledger, runs
from lifecycle.store.states import LedgerStatus, RunStatus, SkipReason

MAX_ATTEMPTS = 3  # delivery attempts per row, counting the automatic re-plans of failures
MAX_BATCHES = 1000  # Airflow's max_map_length is 1024
WAITING_CHUNK = 10_000
PLAN_CHUNK = 20_000  # audience rows per policy pass and bulk insert (bounds memory)


@dataclass(frozen=True)
class Batch:
    """Consecutive due ledger rows of one run: the unit of a mapped delivery task."""

    first_id: int
    last_id: int
    size: int

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Batch:
        return cls(int(data["first_id"]), int(data["last_id"]), int(data["size"]))


@dataclass(frozen=True)
class PlanResult:
    run_id: int
    planned: int  # rows this run will send: due now, or waiting for the send window
    skipped: dict[str, int]
    batches: list[Batch]
    waiting: int = 0
    render_errors: int = 0  # dry run: emails that would fail to render
    render_error_examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "batches": [b.to_dict() for b in self.batches]}


@dataclass(frozen=True)
class Prepared:
    """A plan between its steps: the run, what the partitions plan, and the id ranges."""

    run_id: int
    as_of: datetime
    planned_at: datetime  # every row this plan writes carries it
    ranges: list[segments.IdRange]
    dry_run: bool = False
    remaining: int | None = None  # `limit`: sendable rows still to plan
    phase: Literal["test", "rest"] | None = None
    winner: str | None = None

    @property
    def partitioned(self) -> bool:
        return len(self.ranges) > 1

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "as_of": self.as_of.isoformat(),
            "planned_at": self.planned_at.isoformat(),
            "ranges": [[r.first, r.last] for r in self.ranges],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Prepared:
        return cls(
            **{
                **data,
                "as_of": datetime.fromisoformat(data["as_of"]),
                "planned_at": datetime.fromisoformat(data["planned_at"]),
                "ranges": [segments.IdRange(*bounds) for bounds in data["ranges"]],
            }
        )


def plan(
    engine: Engine,
    spec: CampaignSpec,
    settings: Settings,
    *,
    run_key: str,
    as_of: datetime,
    dry_run: bool = False,
    limit: int | None = None,
    phase: Literal["test", "rest"] | None = None,
    winner: str | None = None,
    partition_size: int | None = None,
) -> PlanResult:
    """Evaluate the audience and policies, write the ledger, return batches of due rows:
    `prepare`, `plan_partition` for each id range in turn, `gather` (the campaign DAG runs the
    partitions as mapped tasks instead).

    `dry_run` writes no ledger rows and sends nothing: it counts, renders every email that would
    be sent, and stores the counts and render errors on the run row.
    `limit` plans at most that many sendable customers in this run (for local debugging, or a
    cautious first send); rows of earlier runs (waiting, or failed and retryable) wait for a run
    without a limit.
    `phase` (specs with an `experiment`): "test" plans the test slice only, every variant by
    weight; "rest" plans everyone else with the `winner` variant.
    """
    prepared = prepare(
        engine,
        spec,
        settings,
        run_key=run_key,
        as_of=as_of,
        dry_run=dry_run,
        limit=limit,
        phase=phase,
        winner=winner,
        partition_size=partition_size,
    )
    rehearsals = [plan_partition(engine, spec, settings, prepared, r) for r in prepared.ranges]
    return gather(engine, spec, prepared, [r for r in rehearsals if r is not None])


def prepare(
    engine: Engine,
    spec: CampaignSpec,
    settings: Settings,
    *,
    run_key: str,
    as_of: datetime,
    dry_run: bool = False,
    limit: int | None = None,
    phase: Literal["test", "rest"] | None = None,
    winner: str | None = None,
    partition_size: int | None = None,
) -> Prepared:
    """The run row; earlier rows expired, requeued or adopted; the audience's id ranges, of
    about `partition_size` customers each (default: the setting). A dry run or a limited run
    plans in one range: a limit counts sendable customers in id order, and a dry run's
    rehearsal lives in one process."""
    if (phase == "rest") != (winner is not None):
        raise ValueError("the rest of an experiment, and only it, is planned with a winner")
    as_of, started = utc(as_of), now()
    with engine.begin() as conn:
        run_id = runs.ensure_run(conn, spec.id, run_key, as_of, dry_run, started)
    remaining = limit
    if not dry_run:
        with engine.begin() as conn:
            ledger.expire_overdue(conn, spec.id, as_of)
            runs.resume_run(conn, run_id)
            if not spec.delivery.sandbox_mode:
                ledger.forget_sandboxed(conn, spec.id)
            if limit is None:  # a limited run is a small test: earlier rows wait for a full one
                ledger.requeue_retryable(conn, spec.id, as_of, MAX_ATTEMPTS)
            else:  # a retried plan counts what its first try planned
                remaining = limit - ledger.run_counts(conn, run_id, as_of)["planned"]
        if limit is None:
            _adopt_waiting(engine, spec, run_id, as_of)
    ranges = [segments.IdRange()]
    if not dry_run and limit is None:
        size = partition_size or settings.partition_size
        ranges = segments.id_ranges(engine, spec, as_of, settings, size)
    return Prepared(run_id, as_of, started, ranges, dry_run, remaining, phase, winner)


def plan_partition(
    engine: Engine,
    spec: CampaignSpec,
    settings: Settings,
    prepared: Prepared,
    customer_ids: segments.IdRange,
) -> dict[str, Any] | None:
    """Plan the audience members in `customer_ids`: policies, then ledger rows. Partitions of
    one plan may run at once (they lock only their customers' frequency-cap buckets). Returns a
    dry run's counts (None for a real run: its rows are in the ledger)."""
    run_id, as_of, dry_run = prepared.run_id, prepared.as_of, prepared.dry_run
    phase, remaining = prepared.phase, prepared.remaining
    others = None
    if prepared.partitioned:
        others = ledger.OtherPartitions(
            run_id, prepared.planned_at, customer_ids.first, customer_ids.last
        )
    rehearsal = DryRun(spec, settings, as_of) if dry_run else None
    members = segments.audience(
        engine, spec, as_of, settings, chunk_size=PLAN_CHUNK, customer_ids=customer_ids
    )
    for chunk in members:
        if remaining is not None and remaining <= 0:
            break
        with engine.begin() as conn:
            if not dry_run:  # uncapped campaigns' rows count toward the others' caps too
                runs.lock_for_planning(conn, run_id, chunk["customer_id"].astype(int).unique())
            if dry_run or remaining is not None:  # count only emails not planned before
                chunk = _not_in_ledger(conn, spec, chunk)
            if phase is not None:
                tested = variants.in_test_slice(chunk["customer_id"].astype(int), spec)
                chunk = chunk[tested if phase == "test" else ~tested]
            chunk = chunk.reset_index(drop=True)
            verdict = policies.evaluate(conn, chunk, spec, as_of, others)
            if remaining is not None:
                sendable = verdict["reason"].isna().astype(int).cumsum()
                keep = sendable <= remaining
                chunk, verdict = chunk[keep], verdict[keep]
                remaining -= int(verdict["reason"].isna().sum())
            rows = _ledger_rows(chunk, verdict, spec, run_id, prepared.planned_at, prepared.winner)
            if rehearsal is not None:
                rehearsal.add(rows)
            else:
                ledger.insert_rows(conn, rows)
    return rehearsal.counts() if rehearsal is not None else None


def gather(
    engine: Engine,
    spec: CampaignSpec,
    prepared: Prepared,
    rehearsals: list[dict[str, Any]] | None = None,
) -> PlanResult:
    """Once every partition is planned: an inbox shared across partitions goes to its lowest
    customer id; then the counts and the batches of due rows (a dry run: its counts, on the
    run row)."""
    if prepared.dry_run:
        return _finish_dry_run(engine, prepared.run_id, _merged(rehearsals or []))
    run_id, as_of = prepared.run_id, prepared.as_of
    if prepared.partitioned:
        with engine.begin() as conn:
            settled = ledger.settle_inboxes(conn, spec.id, run_id, prepared.planned_at)
            ledger.set_templates(
                conn, {row.id: spec.variant_template(None, row.occurrence_key) for row in settled}
            )
    with engine.connect() as conn:
        counts = ledger.run_counts(conn, run_id, as_of)
        size = max(spec.delivery.batch_size, math.ceil(counts["pending"] / MAX_BATCHES))
        bounds = ledger.batch_bounds(conn, run_id, as_of, size)
    return PlanResult(
        run_id, counts["planned"], counts["skipped"], [Batch(*b) for b in bounds], counts["waiting"]
    )


def _merged(rehearsals: list[dict[str, Any]]) -> dict[str, Any]:
    """One dry run's counts from its partitions' counts."""
    skipped: Counter[str] = Counter()
    for counts in rehearsals:
        skipped.update(counts["skipped"])
    examples = [e for counts in rehearsals for e in counts["render_error_examples"]]
    return {
        "planned": sum(c["planned"] for c in rehearsals),
        "skipped": dict(skipped),
        "dry_run": True,
        "rendered": sum(c["rendered"] for c in rehearsals),
        "render_errors": sum(c["render_errors"] for c in rehearsals),
        "render_error_examples": examples[: DryRun.EXAMPLES],
    }


def abandon(engine: Engine, spec: CampaignSpec, *, run_key: str) -> None:
    """Planning failed: the run (if it got that far) is recorded `failed`, never left running."""
    with engine.begin() as conn:
        run = runs.find_run(conn, spec.id, run_key)
        if run is not None and run.status == RunStatus.RUNNING:
            counts = ledger.run_counts(conn, run.id, run.as_of)
            runs.finish_run(conn, run.id, counts, RunStatus.FAILED, now())


def _adopt_waiting(engine: Engine, spec: CampaignSpec, run_id: int, as_of: datetime) -> None:
    """Rows of earlier runs whose send window is open now join this run; others wait on."""
    while True:
        with engine.begin() as conn:
            rows = ledger.waiting_rows(conn, spec.id, run_id, as_of, WAITING_CHUNK)
            if not rows:
                return
            zones = pd.Series([row.timezone for row in rows])
            timing = policies.schedule(zones, as_of, spec.policies.send_window)
            opens = zip(rows, timing["in_window"], timing["send_after"], strict=True)
            ready: list[int] = []
            postponed: list[dict[str, Any]] = []
            for row, in_window, send_after in opens:
                if in_window:
                    ready.append(row.id)
                else:
                    postponed.append({"b_id": row.id, "b_send_after": send_after})
            ledger.adopt(conn, ready, run_id)
            ledger.postpone(conn, postponed)


def _not_in_ledger(conn: Connection, spec: CampaignSpec, chunk: pd.DataFrame) -> pd.DataFrame:
    known = ledger.existing_keys(conn, spec.id, chunk["customer_id"].astype(int).tolist())
    # str() of each value, exactly as _ledger_rows stores the key
    keys = zip(chunk["customer_id"].astype(int), chunk["occurrence_key"].map(str), strict=True)
    return chunk[[key not in known for key in keys]]


def _ledger_rows(
    chunk: pd.DataFrame,
    verdict: pd.DataFrame,
    spec: CampaignSpec,
    run_id: int,
    planned_at: datetime,
    winner: str | None = None,
) -> list[dict[str, Any]]:
    """The ledger rows of an audience chunk: `planned` (with its send window and variant) or
    `skipped` with the policy's reason (no variant: the holdout stays outside the variants).
    With a `winner`, every planned row gets that variant."""
    rows: list[dict[str, Any]] = []
    for record, reason, send_after, expires_at, assigned in zip(
        chunk.to_dict("records"),
        verdict["reason"],
        verdict["send_after"],
        verdict["expires_at"],
        variants.assign(chunk["customer_id"].astype(int), spec),
        strict=True,
    ):
        key = str(record["occurrence_key"])
        sending = not isinstance(reason, str)
        variant = (winner or assigned) if sending else None
        if reason == SkipReason.ERASED:  # nothing of an erased person is written again
            record = {**record, "email": None}
        rows.append(
            {
                "campaign_id": spec.id,
                "occurrence_key": key,
                "customer_id": int(record["customer_id"]),
                "run_id": run_id,
                "status": LedgerStatus.PLANNED if sending else LedgerStatus.SKIPPED,
                "reason": None if sending else reason,
                "template": spec.variant_template(variant, key),
                "variant": variant,
                "email": record["email"].strip() if isinstance(record["email"], str) else None,
                "inbox": addresses.inbox(record["email"])
                if isinstance(record["email"], str)
                else None,
                "locale": record["locale"] if isinstance(record["locale"], str) else None,
                "timezone": record["timezone"],
                "context": {} if reason == SkipReason.ERASED else stored_context(record, spec),
                "planned_at": planned_at,
                "send_after": send_after if sending else None,
                "expires_at": expires_at if sending else None,
            }
        )
    return rows


def _finish_dry_run(engine: Engine, run_id: int, counts: dict[str, Any]) -> PlanResult:
    """A dry run is over once planned: its counts and render errors go on the run row."""
    status = RunStatus.FAILED if counts["render_errors"] else RunStatus.SUCCESS
    with engine.begin() as conn:
        runs.finish_run(conn, run_id, counts, status, now())
    return PlanResult(
        run_id,
        counts["planned"],
        counts["skipped"],
        [],
        render_errors=counts["render_errors"],
        render_error_examples=counts["render_error_examples"],
    )
