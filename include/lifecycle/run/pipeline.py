"""A campaign run, the one code path of the DAG tasks and `lifecycle run`:

    preflight ──► plan ──► deliver (one call per batch, retried at will) ──► finalize

Each step reads and writes the warehouse, so any of them can be retried:

* `plan` upserts the run row on (campaign, run_key) and inserts ledger rows with ON CONFLICT
  DO NOTHING: the same run key gives the same run and never a second row for an email.
* `deliver` claims rows (`planned` → `sending`, stamped with the attempt), sends, records.
  Rows a previous attempt left in `sending` become `unknown` and are not sent again.
* `finalize` counts outcomes and stores them on the run row.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, select

from lifecycle.core import localtime, policies, render, segments, templates
from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import Settings
from lifecycle.delivery import DeliveryStopped, Envelope, Message, Transport
from lifecycle.delivery.outbox import OutboxTransport
from lifecycle.delivery.ratelimit import TokenBucket
from lifecycle.delivery.sendgrid import SendGridTransport
from lifecycle.feedback import compliance, unsubscribe
from lifecycle.store import coupons, ledger, warehouse
from lifecycle.store.ledger import Outcome
from lifecycle.store.schema import test_sends

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3  # delivery attempts per row, counting the automatic re-plans of failures
MAX_BATCHES = 1000  # Airflow's max_map_length is 1024
WAITING_CHUNK = 10_000
PLAN_CHUNK = 20_000  # audience rows per policy pass and bulk insert (bounds memory)
FLUSH_EVERY = 500  # outcomes recorded per UPDATE round trip


class PreflightError(RuntimeError):
    """The run cannot start; the message says what to fix."""


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


@dataclass
class DeliverResult:
    sent: int = 0
    failed: int = 0
    unknown: int = 0  # may have been sent: reported, never re-sent automatically
    skipped: int = 0  # claimed but given back (the run was stopped)
    suppressed: int = 0  # unsubscribed, bounced or reported spam since planning: not sent
    sandboxed: int = 0  # validated by SendGrid's sandbox, not delivered
    interrupted: int = 0  # rows an earlier attempt left in flight, now `unknown`
    failed_reasons: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def add(self, outcome: Outcome) -> None:
        status = outcome.status
        if status == "skipped":
            status = "sandboxed" if outcome.reason == "sandbox" else "suppressed"
        setattr(self, status, getattr(self, status) + 1)
        if outcome.status == "failed":
            key = outcome.reason or "failed"
            self.failed_reasons[key] = self.failed_reasons.get(key, 0) + 1


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"as_of must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


# --- preflight ----------------------------------------------------------------------------
def preflight(engine: Engine, spec: CampaignSpec, settings: Settings, *, as_of: datetime) -> None:
    """Raise `PreflightError` unless the warehouse, segment, templates and transport are ready."""
    _utc(as_of)
    current, head = warehouse.current_revision(engine), warehouse.head_revision()
    if current != head:
        raise PreflightError(
            f"warehouse is at revision {current or '(empty)'}, code expects {head}: "
            "run `lifecycle db upgrade`"
        )
    transport = settings.chosen_transport()
    if transport == "sendgrid" and not settings.sendgrid_api_key:
        raise PreflightError(
            "transport 'sendgrid' needs an API key: set SENDGRID_API_KEY or the password of "
            "the Airflow connection 'sendgrid_default'"
        )
    if transport not in ("sendgrid", "outbox"):
        raise PreflightError(f"unknown transport {transport!r}: use 'sendgrid' or 'outbox'")
    try:
        segments.segment_for(spec, settings)
        render.get_renderer(settings).preflight(spec)
    except (segments.SegmentError, templates.TemplateProblem) as exc:
        raise PreflightError(f"campaign {spec.id}: {exc}") from None


# --- plan ---------------------------------------------------------------------------------
def _json_safe(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp | datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal | np.floating):
        return float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _ledger_rows(
    chunk: pd.DataFrame,
    verdict: pd.DataFrame,
    spec: CampaignSpec,
    run_id: int,
    now: datetime,
) -> list[dict[str, Any]]:
    rows = []
    fields = list(spec.template_fields)
    for record, reason, send_after, expires_at in zip(
        chunk.to_dict("records"),
        verdict["reason"],
        verdict["send_after"],
        verdict["expires_at"],
        strict=True,
    ):
        key = str(record["occurrence_key"])
        sending = not isinstance(reason, str)
        rows.append(
            {
                "campaign_id": spec.id,
                "occurrence_key": key,
                "customer_id": int(record["customer_id"]),
                "run_id": run_id,
                "status": "planned" if sending else "skipped",
                "reason": None if sending else reason,
                "template": spec.template_for(key),
                "email": record["email"] if isinstance(record["email"], str) else None,
                "locale": record["locale"] if isinstance(record["locale"], str) else None,
                "timezone": record["timezone"],
                "context": {
                    "first_name": _json_safe(record.get("first_name")),
                    "last_name": _json_safe(record.get("last_name")),
                    "data": {name: _json_safe(record.get(name)) for name in fields},
                },
                "planned_at": now,
                "send_after": send_after if sending else None,
                "expires_at": expires_at if sending else None,
            }
        )
    return rows


def _not_in_ledger(conn: Any, spec: CampaignSpec, chunk: pd.DataFrame) -> pd.DataFrame:
    known = ledger.existing_keys(conn, spec.id, chunk["customer_id"].astype(int).tolist())
    # str() of each value, exactly as _ledger_rows stores the key
    keys = zip(chunk["customer_id"].astype(int), chunk["occurrence_key"].map(str), strict=True)
    return chunk[[key not in known for key in keys]]


def _adopt_waiting(engine: Engine, spec: CampaignSpec, run_id: int, as_of: datetime) -> None:
    """Rows of earlier runs whose send window is open now join this run; others wait on."""
    while True:
        with engine.begin() as conn:
            rows = ledger.waiting_rows(conn, spec.id, run_id, as_of, WAITING_CHUNK)
            if not rows:
                return
            zones = pd.Series([row.timezone for row in rows])
            timing = policies.schedule(zones, as_of, spec.policies.send_window)
            ledger.adopt(
                conn, [r.id for r, ok in zip(rows, timing["in_window"], strict=True) if ok], run_id
            )
            ledger.postpone(
                conn,
                [
                    {"b_id": row.id, "b_send_after": after}
                    for row, ok, after in zip(
                        rows, timing["in_window"], timing["send_after"], strict=True
                    )
                    if not ok
                ],
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
) -> PlanResult:
    """Evaluate the audience and policies, write the ledger, return batches of due rows.

    `dry_run` writes no ledger rows and sends nothing: it counts, renders every email that would
    be sent, and stores the counts and render errors on the run row.
    `limit` plans at most that many sendable customers in this run (for local debugging, or a
    cautious first send); rows of earlier runs (waiting, or failed and retryable) wait for a run
    without a limit.
    """
    as_of, now = _utc(as_of), _now()
    with engine.begin() as conn:
        run_id = ledger.ensure_run(conn, spec.id, run_key, as_of, dry_run, now)
    remaining = limit
    if not dry_run:
        with engine.begin() as conn:
            ledger.expire_overdue(conn, spec.id, as_of)
            ledger.resume_run(conn, run_id)
            if not spec.delivery.sandbox_mode:
                ledger.forget_sandboxed(conn, spec.id)
            if limit is None:  # a limited run is a small test: earlier rows wait for a full one
                ledger.requeue_retryable(conn, spec.id, as_of, MAX_ATTEMPTS)
            else:  # a retried plan counts what its first try planned
                remaining = limit - ledger.run_counts(conn, run_id, as_of)["planned"]
        if limit is None:
            _adopt_waiting(engine, spec, run_id, as_of)

    rehearsal = _DryRun(_Composer(engine, spec, settings, as_of)) if dry_run else None
    for chunk in segments.audience(engine, spec, as_of, settings, chunk_size=PLAN_CHUNK):
        if remaining is not None and remaining <= 0:
            break
        with engine.begin() as conn:
            if not dry_run:  # uncapped campaigns' rows count toward the others' caps too
                ledger.lock_for_planning(conn, run_id)
            if dry_run or limit is not None:  # count only emails not planned before
                chunk = _not_in_ledger(conn, spec, chunk)
            chunk = chunk.reset_index(drop=True)
            verdict = policies.evaluate(conn, chunk, spec, as_of)
            if remaining is not None:
                sendable = verdict["reason"].isna().cumsum()
                keep = sendable <= remaining
                chunk, verdict = chunk[keep], verdict[keep]
                remaining -= int(verdict["reason"].isna().sum())
            rows = _ledger_rows(chunk, verdict, spec, run_id, now)
            if rehearsal is not None:
                rehearsal.add(rows)
                continue
            ledger.insert_rows(conn, rows)

    if rehearsal is not None:
        counts = rehearsal.counts()
        status = "failed" if counts["render_errors"] else "success"
        with engine.begin() as conn:
            ledger.finish_run(conn, run_id, counts, status, _now())
        return PlanResult(
            run_id,
            counts["planned"],
            counts["skipped"],
            [],
            render_errors=counts["render_errors"],
            render_error_examples=counts["render_error_examples"],
        )

    with engine.connect() as conn:
        counts = ledger.run_counts(conn, run_id, as_of)
        due = counts["pending"]
        size = max(spec.delivery.batch_size, math.ceil(due / MAX_BATCHES))
        bounds = ledger.batch_bounds(conn, run_id, as_of, size)
    return PlanResult(
        run_id,
        counts["planned"],
        counts["skipped"],
        [Batch(*b) for b in bounds],
        counts["waiting"],
    )


class _DryRun:
    """A dry run's rehearsal of delivery: every email that would be sent is rendered (with a
    sample coupon, so none is issued) and nothing is written or sent."""

    EXAMPLES = 5

    def __init__(self, composer: _Composer) -> None:
        self.composer = composer
        self.planned = 0
        self.skipped: Counter[str] = Counter()
        self.render_errors = 0
        self.examples: list[str] = []

    def add(self, rows: list[dict[str, Any]]) -> None:
        coupon = self.composer.sample_coupon()
        for index, row in enumerate(rows):
            if row["status"] == "skipped":
                self.skipped[row["reason"]] += 1
                continue
            self.planned += 1
            try:
                self.composer.message(SimpleNamespace(id=-(index + 1), **row), coupon)
            except Exception as exc:  # reported like a real run's render_error, never raised
                self.render_errors += 1
                if len(self.examples) < self.EXAMPLES:
                    self.examples.append(
                        f"customer {row['customer_id']}: {type(exc).__name__}: {exc}"[:500]
                    )

    def counts(self) -> dict[str, Any]:
        return {
            "planned": self.planned,
            "skipped": dict(self.skipped),
            "dry_run": True,
            "rendered": self.planned - self.render_errors,
            "render_errors": self.render_errors,
            "render_error_examples": self.examples,
        }


# --- deliver ------------------------------------------------------------------------------
def envelope_for(spec: CampaignSpec) -> Envelope:
    return Envelope(
        sender_email=str(spec.sender.email),
        sender_name=spec.sender.name,
        reply_to_email=str(spec.reply_to.email) if spec.reply_to else None,
        reply_to_name=spec.reply_to.name if spec.reply_to else None,
        categories=tuple(spec.delivery.categories),
        asm_group_id=spec.delivery.asm_group_id,
        sandbox_mode=spec.delivery.sandbox_mode,
    )


def make_transport(
    settings: Settings, spec: CampaignSpec, outbox_dir: Path | None = None
) -> Transport:
    envelope = envelope_for(spec)
    if settings.chosen_transport() == "sendgrid":
        return SendGridTransport(
            settings.sendgrid_api_key or "",
            settings.sendgrid_host,
            envelope,
            concurrency=spec.delivery.concurrency,
        )
    return OutboxTransport(outbox_dir or settings.outbox_dir / spec.id, envelope)


class _Composer:
    """Turns claimed ledger rows into rendered messages (coupons, unsubscribe links, headers)."""

    def __init__(self, engine: Engine, spec: CampaignSpec, settings: Settings, as_of: datetime):
        self.engine, self.spec, self.settings, self.as_of = engine, spec, settings, as_of
        self.renderer = render.get_renderer(settings)

    def _coupons(self, rows: list[Any]) -> dict[tuple[int, str], Any]:
        if self.spec.coupon is None:
            return {}
        keys = [(int(row.customer_id), row.occurrence_key) for row in rows]
        with self.engine.begin() as conn:
            return coupons.ensure_coupons(
                conn,
                self.spec.id,
                keys,
                self.spec.coupon.discount_percent,
                self.spec.coupon.valid_days,
                self.as_of,
            )

    def _suppressed(self, rows: list[Any]) -> set[str]:
        """Addresses suppressed since planning (an unsubscribe while the row waited)."""
        emails = [row.email.lower() for row in rows if row.email]
        scopes = policies.suppression_scopes(self.spec)
        with self.engine.connect() as conn:
            return policies.suppressed_emails(conn, emails, scopes)

    def compose(self, rows: list[Any]) -> tuple[list[Message], list[Outcome]]:
        """Messages for the rows that may still be mailed; outcomes for the others."""
        blocked = self._suppressed(rows)
        failures, mailable = [], []
        for row in rows:
            if row.email and row.email.lower() in blocked:
                failures.append(Outcome(row.id, "skipped", reason="suppressed"))
            else:
                mailable.append(row)
        rows = mailable
        issued = self._coupons(rows)
        messages = []
        for row in rows:
            try:
                messages.append(
                    self.message(row, issued.get((int(row.customer_id), row.occurrence_key)))
                )
            except (
                Exception
            ) as exc:  # one broken row must not stop the batch; it surely did not leave
                error = f"{type(exc).__name__}: {exc}"[:1000]
                failures.append(
                    Outcome(row.id, "failed", error=error, retryable=False, reason="render_error")
                )
        return messages, failures

    def sample_coupon(self) -> SimpleNamespace | None:
        """A coupon shaped like the real one, never stored (dry runs and test sends)."""
        if self.spec.coupon is None:
            return None
        return SimpleNamespace(
            code="TEST-COUPON",
            discount_percent=self.spec.coupon.discount_percent,
            expires_at=self.as_of + timedelta(days=self.spec.coupon.valid_days),
        )

    def message(self, row: Any, coupon: Any) -> Message:
        spec, settings = self.spec, self.settings
        stored = row.context or {}
        token = unsubscribe.token_for(settings, int(row.customer_id), spec.id, row.email)
        url = unsubscribe.unsubscribe_url(settings, token)
        zone = localtime.zone_or_utc(row.timezone)
        context = {
            "customer": {
                "id": int(row.customer_id),
                "first_name": stored.get("first_name"),
                "last_name": stored.get("last_name"),
                "email": row.email,
                "locale": row.locale,
                "timezone": row.timezone,
            },
            "campaign": {"id": spec.id, "occurrence_key": row.occurrence_key},
            "data": stored.get("data", {}),
            "coupon": None
            if coupon is None
            else {
                "code": coupon.code,
                "discount_percent": coupon.discount_percent,
                "expires_at": coupon.expires_at,
            },
            "unsubscribe_url": url,
            "local_date": self.as_of.astimezone(zone).date(),
        }
        rendered = self.renderer.render(row.template, row.locale, spec.default_locale, context)
        name = " ".join(p for p in (stored.get("first_name"), stored.get("last_name")) if p)
        return Message(
            send_id=int(row.id),
            to_email=row.email,
            to_name=name or None,
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            headers=compliance.list_unsubscribe_headers(settings, url, token),
            custom_args={
                "send_id": str(row.id),
                "campaign": spec.id,
                "occurrence_key": row.occurrence_key,
            },
        )


async def _deliver(
    engine: Engine,
    spec: CampaignSpec,
    settings: Settings,
    run: Any,
    batch: Batch,
    attempt: str,
    result: DeliverResult,
) -> None:
    composer = _Composer(engine, spec, settings, run.as_of)
    transport = make_transport(settings, spec)
    # rate_per_second is the campaign's total: each of the parallel batch tasks gets its share.
    limiter = TokenBucket(spec.delivery.rate_per_second / spec.delivery.max_active_batches)
    slots = asyncio.Semaphore(spec.delivery.concurrency)
    claim_size = max(50, spec.delivery.concurrency)
    outcomes: list[Outcome] = []
    unsent: set[int] = set()  # claimed by us, not handed to the transport (or refused 401/403)
    in_flight: set[asyncio.Task[Outcome]] = set()
    stop: list[DeliveryStopped] = []

    def finished(task: asyncio.Task[Outcome], send_id: int) -> None:
        in_flight.discard(task)
        slots.release()
        if task.cancelled():
            outcomes.append(Outcome(send_id, "unknown", error="cancelled", reason="interrupted"))
            return
        error = task.exception()
        if isinstance(error, DeliveryStopped):
            stop.append(error)
            unsent.add(send_id)
        elif error is not None:
            message = f"{type(error).__name__}: {error}"[:1000]
            outcomes.append(Outcome(send_id, "unknown", error=message, reason="transport_error"))
        else:
            outcomes.append(task.result())

    async def flush() -> None:
        while outcomes:
            done = outcomes[:]
            outcomes.clear()
            await asyncio.to_thread(_record, engine, done, attempt)
            for outcome in done:
                result.add(outcome)

    # Claiming and rendering run ahead of sending (one chunk), so the connections stay busy.
    ready: asyncio.Queue[list[Message] | None] = asyncio.Queue(maxsize=1)

    async def produce() -> None:
        try:
            while not stop:
                rows = await asyncio.to_thread(_claim, engine, run, batch, attempt, claim_size)
                if not rows:
                    break
                unsent.update(row.id for row in rows)
                messages, failures = await asyncio.to_thread(composer.compose, rows)
                unsent.difference_update(failure.send_id for failure in failures)
                outcomes.extend(failures)
                await ready.put(messages)
        finally:
            await ready.put(None)

    producer = asyncio.create_task(produce())
    recording: asyncio.Task[None] | None = None
    try:
        while (messages := await ready.get()) is not None:
            for message in messages:
                await slots.acquire()
                if stop:
                    slots.release()
                    break
                if transport.throttled:
                    await limiter.acquire()
                unsent.discard(message.send_id)
                task = asyncio.create_task(transport.send(message))
                in_flight.add(task)
                task.add_done_callback(lambda t, sid=message.send_id: finished(t, sid))
            if len(outcomes) >= FLUSH_EVERY and (recording is None or recording.done()):
                if recording is not None:
                    await recording  # surfaces a failed write
                recording = asyncio.create_task(flush())
        await producer
        while in_flight:
            await asyncio.wait(set(in_flight))
        if recording is not None:
            await recording
        await flush()
    finally:
        producer.cancel()
        await transport.close()
        if unsent:
            await asyncio.to_thread(_release, engine, sorted(unsent), attempt)
            result.skipped += len(unsent)
    if stop:
        raise stop[0]


def _claim(engine: Engine, run: Any, batch: Batch, attempt: str, size: int) -> list[Any]:
    with engine.begin() as conn:
        return ledger.claim(
            conn, run.id, batch.first_id, batch.last_id, run.as_of, attempt, _now(), size
        )


def _record(engine: Engine, outcomes: list[Outcome], attempt: str) -> None:
    with engine.begin() as conn:
        ledger.record(conn, outcomes, attempt, _now())


def _release(engine: Engine, ids: list[int], attempt: str) -> None:
    with engine.begin() as conn:
        ledger.release(conn, ids, attempt)


def deliver(
    engine: Engine,
    spec: CampaignSpec,
    settings: Settings,
    *,
    run_id: int,
    batch: Batch,
    attempt: str,
) -> DeliverResult:
    """Send the due rows of `batch`. `attempt` must differ between retries (e.g. try number).

    Raises `DeliveryStopped` when SendGrid answers 401/403 (after recording what was sent, and
    marking the run stopped so its other batches send nothing), or when the run is stopped.
    """
    result = DeliverResult()
    with engine.begin() as conn:
        run = ledger.get_run(conn, run_id)
        if run.status == "stopped":
            raise DeliveryStopped(f"the run was stopped: {(run.counts or {}).get('stopped')}")
        result.interrupted = ledger.mark_interrupted(
            conn, run_id, batch.first_id, batch.last_id, attempt
        )
    if result.interrupted:
        log.warning(
            "%d rows left in flight by an earlier attempt are now 'unknown' (not resent)",
            result.interrupted,
        )
    started = time.perf_counter()
    try:
        asyncio.run(_deliver(engine, spec, settings, run, batch, attempt, result))
    except DeliveryStopped as stopped:
        with engine.begin() as conn:
            ledger.stop_run(conn, run_id, str(stopped))
        raise
    finally:
        elapsed = time.perf_counter() - started
        log.info(
            "%s rows %d-%d: sent %d, failed %d %s, unknown %d, suppressed since planning %d, "
            "given back %d in %.1f s (%.0f/s)",
            spec.id,
            batch.first_id,
            batch.last_id,
            result.sent,
            result.failed,
            result.failed_reasons or "",
            result.unknown,
            result.suppressed,
            result.skipped,
            elapsed,
            result.sent / elapsed if elapsed else 0.0,
        )
    return result


# --- finalize -----------------------------------------------------------------------------
def finalize(engine: Engine, spec: CampaignSpec, *, run_id: int) -> dict[str, Any]:
    """Outcome counts of the run, stored on its campaign_runs row, plus its `status`.

    Runs after every delivery attempt has ended, however it ended: rows still `sending` become
    `unknown`. Status: `stopped` when SendGrid refused the key or sender (`stopped` says why);
    `failed` when any row's fate is unknown, due rows were left undelivered (a delivery task
    failed), or nothing could be sent although something was due; else `success`.
    """
    with engine.begin() as conn:
        run = ledger.get_run(conn, run_id)
        if run.dry_run:
            return {**(run.counts or {}), "status": run.status}
        ledger.mark_run_interrupted(conn, run_id)
        counts = ledger.run_counts(conn, run_id, run.as_of)
        if run.status == "stopped":
            status, counts["stopped"] = "stopped", (run.counts or {}).get("stopped")
        elif counts["unknown"] or counts["pending"] or (counts["failed"] and not counts["sent"]):
            status = "failed"
        else:
            status = "success"
        ledger.finish_run(conn, run_id, counts, status, _now())
    return {**counts, "status": status}


def abandon(engine: Engine, spec: CampaignSpec, *, run_key: str) -> None:
    """Planning failed: the run (if it got that far) is recorded `failed`, never left running."""
    with engine.begin() as conn:
        run = ledger.find_run(conn, spec.id, run_key)
        if run is not None and run.status == "running":
            counts = ledger.run_counts(conn, run.id, run.as_of)
            ledger.finish_run(conn, run.id, counts, "failed", _now())


# --- test sends ---------------------------------------------------------------------------
def _sample_rows(
    engine: Engine, spec: CampaignSpec, settings: Settings, as_of: datetime, limit: int
) -> list[SimpleNamespace]:
    """The first `limit` audience members with a valid address, shaped like ledger rows."""
    rows: list[SimpleNamespace] = []
    for chunk in segments.audience(engine, spec, as_of, settings, chunk_size=max(limit, 1000)):
        valid = chunk[chunk["email_valid"].astype(bool)].head(limit - len(rows))
        for record in valid.to_dict("records"):
            key = str(record["occurrence_key"])
            rows.append(
                SimpleNamespace(
                    id=-(len(rows) + 1),  # no ledger row: test sends never touch the ledger
                    customer_id=int(record["customer_id"]),
                    occurrence_key=key,
                    template=spec.template_for(key),
                    email=record["email"],
                    locale=record["locale"] if isinstance(record["locale"], str) else None,
                    timezone=record["timezone"],
                    context={
                        "first_name": _json_safe(record.get("first_name")),
                        "last_name": _json_safe(record.get("last_name")),
                        "data": {f: _json_safe(record.get(f)) for f in spec.template_fields},
                    },
                )
            )
        if len(rows) >= limit:
            break
    return rows


def send_tests(
    engine: Engine,
    spec: CampaignSpec,
    settings: Settings,
    *,
    run_key: str,
    as_of: datetime,
    recipients: list[str],
    limit: int = 3,
) -> int:
    """Render real audience members' emails and send them only to internal `recipients`.

    Recorded in `test_sends` (one row per customer and recipient); no ledger rows, no coupons
    issued (a sample code is shown). A retry does not resend what was already sent.
    Returns the number of test emails sent (or, in sandbox mode, validated).
    """
    as_of = _utc(as_of)
    with engine.begin() as conn:
        run_id = ledger.ensure_run(conn, spec.id, run_key, as_of, True, _now())
        done = set(
            conn.execute(
                select(test_sends.c.customer_id, test_sends.c.recipient).where(
                    test_sends.c.run_id == run_id, test_sends.c.status.in_(("sent", "sandbox"))
                )
            ).tuples()
        )
    composer = _Composer(engine, spec, settings, as_of)
    messages, coupon = [], composer.sample_coupon()
    for row in _sample_rows(engine, spec, settings, as_of, limit):
        rendered = composer.message(row, coupon)
        for recipient in recipients:
            if (row.customer_id, recipient) not in done:
                test = dataclasses.replace(
                    rendered,
                    send_id=len(messages) + 1,
                    to_email=recipient,
                    to_name=None,
                    subject=f"[TEST] {rendered.subject}",
                    custom_args={"campaign": spec.id, "test_send": "true"},
                )
                messages.append((row.customer_id, test))
    outbox = settings.outbox_dir / spec.id / "tests" / str(run_id)
    outcomes = asyncio.run(_send_each(make_transport(settings, spec, outbox), messages))
    now = _now()
    with engine.begin() as conn:
        for (customer_id, message), outcome in zip(messages, outcomes, strict=True):
            values = {
                "status": outcome.reason if outcome.reason == "sandbox" else outcome.status,
                "message_id": outcome.message_id,
                "error": outcome.error,
                "sent_at": now,
            }
            conn.execute(
                ledger.insert_or_update_test_send(conn),
                {
                    "run_id": run_id,
                    "campaign_id": spec.id,
                    "customer_id": customer_id,
                    "recipient": message.to_email,
                    **values,
                },
            )
    return sum(o.status == "sent" or o.reason == "sandbox" for o in outcomes)


async def _send_each(transport: Transport, messages: list[tuple[int, Message]]) -> list[Outcome]:
    try:
        return [await transport.send(message) for _, message in messages]
    finally:
        await transport.close()


# --- the whole run ------------------------------------------------------------------------
def run_campaign(
    engine: Engine,
    spec: CampaignSpec,
    settings: Settings,
    *,
    as_of: datetime,
    run_key: str | None = None,
    dry_run: bool = False,
    limit: int | None = None,
) -> dict[str, Any]:
    """preflight → plan → deliver every batch → finalize, in this process (`lifecycle run`)."""
    as_of = _utc(as_of)
    run_key = run_key or f"cli{'_dry' if dry_run else ''}__{as_of:%Y-%m-%dT%H:%M:%S}"
    preflight(engine, spec, settings, as_of=as_of)
    planned = plan(
        engine, spec, settings, run_key=run_key, as_of=as_of, dry_run=dry_run, limit=limit
    )
    attempt = f"{run_key}/{uuid.uuid4().hex[:8]}"
    try:
        for batch in planned.batches:
            deliver(engine, spec, settings, run_id=planned.run_id, batch=batch, attempt=attempt)
    finally:
        counts = finalize(engine, spec, run_id=planned.run_id)
    return {"run_id": planned.run_id, **counts}
