"""Deliver: send one batch of a run's due ledger rows; one call per mapped task, retried at will.

Rows are claimed (`planned` → `sending`, stamped with the attempt), composed, sent and their
outcomes recorded in bulk. Rows a previous attempt left in `sending` may have been sent: they
become `unknown` and are never sent again automatically. Claimed rows this attempt did not hand
to the transport go back to `planned`.

With `delivery.recipients_per_request` N > 1 one request carries up to N rows (`run.bulk`),
and its answer is every one of its rows' outcome. An attempt never holds more than
`crash_bound` claimed rows without a recorded outcome (FLUSH_EVERY + 3 × concurrency × N), so
a crash leaves at most that many `unknown`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, Row

from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import Settings
from lifecycle.delivery import BulkMessage, DeliveryStopped, Message
from lifecycle.delivery.ratelimit import TokenBucket
from lifecycle.run.clock import now
from lifecycle.run.compose import Composer, make_transport
from lifecycle.run.plan import Batch
from lifecycle.run.rates import task_rate
from lifecycle.run.rows import EmailRow, from_ledger
from lifecycle.store import ledger, runs
from lifecycle.store.ledger import Outcome
from lifecycle.store.states import FailReason, LedgerStatus, RunStatus, SkipReason

log = logging.getLogger(__name__)
FLUSH_EVERY = 500  # outcomes recorded per UPDATE round trip


def crash_bound(concurrency: int, per_request: int = 1) -> int:
    """The most rows one attempt holds claimed with no outcome written: all that killing it
    can leave `unknown`. Claiming waits (recording what is done) to stay within it."""
    return FLUSH_EVERY + 3 * concurrency * per_request


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
        match outcome.status:
            case LedgerStatus.SENT:
                self.sent += 1
            case LedgerStatus.UNKNOWN:
                self.unknown += 1
            case LedgerStatus.FAILED:
                self.failed += 1
                key = outcome.reason or "failed"
                self.failed_reasons[key] = self.failed_reasons.get(key, 0) + 1
            case LedgerStatus.SKIPPED if outcome.reason == SkipReason.SANDBOX:
                self.sandboxed += 1
            case LedgerStatus.SKIPPED:
                self.suppressed += 1
            case other:
                raise ValueError(f"a send cannot end {other!r}")


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
        run = runs.get_run(conn, run_id)
        if run.status == RunStatus.STOPPED:
            raise DeliveryStopped(f"the run was stopped: {(run.counts or {}).get('stopped')}")
        if run.status in (RunStatus.REJECTED, RunStatus.EXPIRED):
            log.warning("run %d was %s at approval: nothing is sent", run_id, run.status)
            return result
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
            runs.stop_run(conn, run_id, str(stopped))
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


async def _deliver(
    engine: Engine,
    spec: CampaignSpec,
    settings: Settings,
    run: Row[Any],
    batch: Batch,
    attempt: str,
    result: DeliverResult,
) -> None:
    composer = Composer(spec, settings, run.as_of)
    transport = make_transport(settings, spec)
    limiter = TokenBucket(task_rate(spec, settings))
    slots = asyncio.Semaphore(spec.delivery.concurrency)
    per_request = min(spec.delivery.recipients_per_request, transport.max_recipients)
    bound = crash_bound(spec.delivery.concurrency, per_request)
    claim_size = min(max(50, spec.delivery.concurrency, 4 * per_request), bound)
    held = 0  # rows claimed by this attempt whose outcome is not written yet
    progress = asyncio.Event()  # an outcome arrived or was written
    recording: asyncio.Task[None] | None = None
    outcomes: list[Outcome] = []
    unsent: set[int] = set()  # claimed by us, not handed to the transport (or refused 401/403)
    in_flight: set[asyncio.Task[Outcome | list[Outcome]]] = set()
    stop: list[DeliveryStopped] = []

    def finished(task: asyncio.Task[Outcome | list[Outcome]], send_ids: list[int]) -> None:
        in_flight.discard(task)
        slots.release()
        progress.set()  # wakes a waiting claim once this callback has run
        if task.cancelled():
            outcomes.extend(
                Outcome(i, LedgerStatus.UNKNOWN, error="cancelled", reason=FailReason.INTERRUPTED)
                for i in send_ids
            )
            return
        error = task.exception()
        if isinstance(error, DeliveryStopped):
            stop.append(error)
            unsent.update(send_ids)
        elif error is not None:
            message = f"{type(error).__name__}: {error}"[:1000]
            outcomes.extend(
                Outcome(i, LedgerStatus.UNKNOWN, error=message, reason=FailReason.TRANSPORT_ERROR)
                for i in send_ids
            )
        else:
            answer = task.result()
            outcomes.extend(answer if isinstance(answer, list) else [answer])

    async def flush() -> None:
        nonlocal held
        while outcomes:
            done = outcomes[:]
            outcomes.clear()
            await asyncio.to_thread(_record, engine, done, attempt)
            held -= len(done)
            progress.set()
            for outcome in done:
                result.add(outcome)

    def start_flush() -> asyncio.Task[None]:
        """The running write of outcomes, or a new one (raising if the last one failed)."""
        nonlocal recording
        if recording is None or recording.done():
            if recording is not None:
                recording.result()  # surfaces a failed write
            recording = asyncio.create_task(flush())
        return recording

    async def room_to_claim() -> None:
        while held + claim_size > bound and not stop:
            if outcomes or (recording is not None and not recording.done()):
                await start_flush()
            else:  # everything held is in flight or queued: wait for an outcome
                progress.clear()
                await progress.wait()

    # Claiming and rendering run ahead of sending (one chunk), so the connections stay busy.
    ready: asyncio.Queue[list[Message | BulkMessage] | None] = asyncio.Queue(maxsize=1)

    async def produce() -> None:
        nonlocal held
        try:
            while not stop:
                await room_to_claim()
                rows = await asyncio.to_thread(_claim, engine, run, batch, attempt, claim_size)
                if not rows:
                    break
                held += len(rows)
                unsent.update(row.send_id for row in rows)
                requests, failures = await asyncio.to_thread(
                    composer.compose, engine, rows, per_request
                )
                unsent.difference_update(failure.send_id for failure in failures)
                outcomes.extend(failures)
                await ready.put(requests)
        finally:
            await ready.put(None)

    producer = asyncio.create_task(produce())
    try:
        while (requests := await ready.get()) is not None:
            for request in requests:
                await slots.acquire()
                if stop:
                    slots.release()
                    break
                send_ids = (
                    request.send_ids if isinstance(request, BulkMessage) else [request.send_id]
                )
                if transport.throttled:
                    await limiter.acquire(len(send_ids))
                unsent.difference_update(send_ids)
                task: asyncio.Task[Outcome | list[Outcome]] = asyncio.create_task(
                    transport.send_bulk(request)
                    if isinstance(request, BulkMessage)
                    else transport.send(request)
                )
                in_flight.add(task)
                task.add_done_callback(functools.partial(finished, send_ids=send_ids))
            if len(outcomes) >= FLUSH_EVERY and (recording is None or recording.done()):
                start_flush()
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


def _claim(engine: Engine, run: Row[Any], batch: Batch, attempt: str, size: int) -> list[EmailRow]:
    with engine.begin() as conn:
        claimed = ledger.claim(
            conn, run.id, batch.first_id, batch.last_id, run.as_of, attempt, now(), size
        )
    return [from_ledger(row) for row in claimed]


def _record(engine: Engine, outcomes: list[Outcome], attempt: str) -> None:
    with engine.begin() as conn:
        ledger.record(conn, outcomes, attempt, now())


def _release(engine: Engine, ids: list[int], attempt: str) -> None:
    with engine.begin() as conn:
        ledger.release(conn, ids, attempt)
