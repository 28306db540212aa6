"""The send ledger (`send_ledger`): every statement planning and delivery run on it, in one place.

One row per campaign, occurrence key and customer. Its states, skip and failure reasons and how
a row moves between them are in `lifecycle.store.states`. ``run_id`` is the run that owns the
row: the one that planned it, or a later run that picked it up (a row that waited for the
customer's send window, or a retryable failure). The runs themselves are in `store.runs`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    and_,
    any_,
    bindparam,
    delete,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from lifecycle.store import staging
from lifecycle.store.dialect import insert
from lifecycle.store.schema import send_ledger
from lifecycle.store.states import TAKEN, FailReason, LedgerStatus, SkipReason

L = send_ledger
IN_CHUNK = 5_000  # bound parameters per IN list (SQLite allows 32,766 per statement)


def chunked(values: Sequence[Any], size: int = IN_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def is_in(conn: Connection, column: Any, values: Sequence[Any]) -> ColumnElement[bool]:
    """`column IN (values)`; on PostgreSQL `column = ANY(array)`: one parameter instead of
    thousands, which psycopg binds much faster."""
    if conn.dialect.name == "postgresql":
        return column == any_(literal(list(values), ARRAY(column.type)))
    return column.in_(values)


# --- planning -----------------------------------------------------------------------------
def insert_rows(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Bulk insert, in order; a row whose (campaign, occurrence key, customer) exists is left
    alone. On PostgreSQL with psycopg the rows are COPied into a staging table first
    (`store.staging`): several times faster than an INSERT per row."""
    if not rows:
        return
    statement = insert(conn, L).on_conflict_do_nothing(
        index_elements=["campaign_id", "occurrence_key", "customer_id"]
    )
    if staging.supported(conn):
        staging.copy_then_insert(conn, statement, rows)
    else:
        conn.execute(statement, rows)


def forget_sandboxed(conn: Connection, campaign_id: str) -> int:
    """Rows that only went to SendGrid's sandbox (validated, never delivered) are deleted, so a
    campaign taken out of sandbox mode plans and sends them for real."""
    return conn.execute(
        delete(L).where(
            L.c.campaign_id == campaign_id,
            L.c.status == LedgerStatus.SKIPPED,
            L.c.reason == SkipReason.SANDBOX,
        )
    ).rowcount


def taken_counts(conn: Connection, customer_ids: Sequence[int], since: datetime) -> dict[int, int]:
    """Marketing emails per customer since `since`, all campaigns: sent, in flight or planned."""
    when = func.coalesce(L.c.sent_at, L.c.claimed_at, L.c.planned_at)
    counts: dict[int, int] = {}
    for part in chunked(list(customer_ids)):
        query = (
            select(L.c.customer_id, func.count())
            .where(is_in(conn, L.c.customer_id, part), L.c.status.in_(TAKEN), when >= since)
            .group_by(L.c.customer_id)
        )
        counts.update({int(cid): int(n) for cid, n in conn.execute(query)})
    return counts


def expire_overdue(conn: Connection, campaign_id: str, as_of: datetime) -> int:
    """Planned rows whose time ran out (e.g. a birthday two days ago) are skipped as expired."""
    return conn.execute(
        update(L)
        .where(
            L.c.campaign_id == campaign_id,
            L.c.status == LedgerStatus.PLANNED,
            L.c.expires_at <= as_of,
        )
        .values(status=LedgerStatus.SKIPPED, reason=SkipReason.EXPIRED)
    ).rowcount


def existing_keys(
    conn: Connection, campaign_id: str, customer_ids: Sequence[int]
) -> set[tuple[int, str]]:
    """(customer id, occurrence key) pairs of `campaign_id` already in the ledger."""
    found: set[tuple[int, str]] = set()
    for part in chunked(sorted(set(customer_ids))):
        query = select(L.c.customer_id, L.c.occurrence_key).where(
            L.c.campaign_id == campaign_id, is_in(conn, L.c.customer_id, part)
        )
        found.update((int(c), str(k)) for c, k in conn.execute(query))
    return found


@dataclass(frozen=True)
class OtherPartitions:
    """The rows one partitioned plan writes outside the partition being planned (customer ids
    `first`..`last`, None: unbounded): whether they keep an inbox is only known once every
    partition is planned (`settle_inboxes`), so they hold none meanwhile."""

    run_id: int
    planned_at: datetime  # of every row the plan writes
    first: int | None
    last: int | None

    def rows(self) -> ColumnElement[bool]:
        outside = or_(
            L.c.customer_id < self.first if self.first is not None else false(),
            L.c.customer_id > self.last if self.last is not None else false(),
        )
        return and_(L.c.run_id == self.run_id, L.c.planned_at >= self.planned_at, outside)


def inbox_holders(
    conn: Connection,
    campaign_id: str,
    inboxes: Sequence[str],
    others: OtherPartitions | None = None,
) -> dict[tuple[str, str], int]:
    """(occurrence key, inbox) → the customer whose email of `campaign_id` to that inbox is
    sent, on its way or planned. `inboxes` are trimmed and lower-cased (`core.addresses.inbox`).
    """
    holders: dict[tuple[str, str], int] = {}
    for part in chunked(sorted(set(inboxes))):
        query = (
            select(L.c.occurrence_key, L.c.inbox, func.min(L.c.customer_id))
            .where(
                L.c.campaign_id == campaign_id,
                is_in(conn, L.c.inbox, part),
                L.c.status.in_(TAKEN),
                not_(others.rows()) if others is not None else true(),
            )
            .group_by(L.c.occurrence_key, L.c.inbox)
        )
        holders.update({(str(k), str(i)): int(c) for k, i, c in conn.execute(query)})
    return holders


def settle_inboxes(
    conn: Connection, campaign_id: str, run_id: int, planned_at: datetime
) -> list[Row[Any]]:
    """After a partitioned plan: where rows it planned in different partitions share an
    (occurrence key, inbox), the lowest customer id keeps it and the others are skipped as
    `duplicate_address`, as one plan in customer-id order would have decided. Returns the
    skipped rows (id, occurrence key); the caller clears their variant and template."""
    fresh = and_(
        L.c.campaign_id == campaign_id,
        L.c.run_id == run_id,
        L.c.planned_at >= planned_at,
        L.c.status == LedgerStatus.PLANNED,
        L.c.inbox.is_not(None),
    )
    # one scan and a sort (a customer has one row per occurrence key: rank 1 is the lowest id)
    ranked = (
        select(
            L.c.id,
            L.c.occurrence_key,
            func.row_number()
            .over(partition_by=(L.c.occurrence_key, L.c.inbox), order_by=L.c.customer_id)
            .label("rank"),
        )
        .where(fresh)
        .subquery()
    )
    losers = select(ranked.c.id, ranked.c.occurrence_key).where(ranked.c.rank > 1)
    rows = list(conn.execute(losers.order_by(ranked.c.id)))
    for part in chunked([row.id for row in rows]):
        conn.execute(
            update(L)
            .where(is_in(conn, L.c.id, part), L.c.status == LedgerStatus.PLANNED)
            .values(
                status=LedgerStatus.SKIPPED,
                reason=SkipReason.DUPLICATE,
                variant=None,
                send_after=None,
                expires_at=None,
            )
        )
    return rows


def set_templates(conn: Connection, templates: dict[int, str]) -> None:
    """Each row's template, by row id."""
    if templates:
        conn.execute(
            update(L).where(L.c.id == bindparam("b_id")).values(template=bindparam("b_template")),
            [{"b_id": i, "b_template": t} for i, t in templates.items()],
        )


def requeue_retryable(
    conn: Connection, campaign_id: str, as_of: datetime, max_attempts: int
) -> int:
    """Failures that surely never left (429, 5xx, refused connection) go back to planned.

    They stay with their run, so the next run adopts them like any waiting row: only once the
    customer's send window is open.
    """
    return conn.execute(
        update(L)
        .where(
            L.c.campaign_id == campaign_id,
            L.c.status == LedgerStatus.FAILED,
            L.c.retryable.is_(True),
            L.c.attempts < max_attempts,
            or_(L.c.expires_at.is_(None), L.c.expires_at > as_of),
        )
        .values(status=LedgerStatus.PLANNED, claimed_by=None, claimed_at=None)
    ).rowcount


def waiting_rows(
    conn: Connection, campaign_id: str, run_id: int, as_of: datetime, limit: int
) -> list[Row[Any]]:
    """Planned rows of earlier runs that are due now (their send window may have opened)."""
    query = (
        select(L.c.id, L.c.timezone)
        .where(
            L.c.campaign_id == campaign_id,
            L.c.status == LedgerStatus.PLANNED,
            L.c.run_id != run_id,
            L.c.send_after <= as_of,
        )
        .order_by(L.c.id)
        .limit(limit)
    )
    return list(conn.execute(query))


def adopt(conn: Connection, ids: Sequence[int], run_id: int) -> None:
    for part in chunked(list(ids)):
        conn.execute(update(L).where(is_in(conn, L.c.id, part)).values(run_id=run_id))


def postpone(conn: Connection, updates: list[dict[str, Any]]) -> None:
    """Rows still outside their window wait again: [{"b_id", "b_send_after"}, ...]."""
    if updates:
        conn.execute(
            update(L)
            .where(L.c.id == bindparam("b_id"))
            .values(send_after=bindparam("b_send_after")),
            updates,
        )


def _due(run_id: int, as_of: datetime) -> ColumnElement[bool]:
    return and_(
        L.c.run_id == run_id,
        L.c.status == LedgerStatus.PLANNED,
        or_(L.c.send_after.is_(None), L.c.send_after <= as_of),
    )


def batch_bounds(
    conn: Connection, run_id: int, as_of: datetime, size: int
) -> list[tuple[int, int, int]]:
    """(first_id, last_id, rows) of consecutive due rows, `size` rows each, computed in SQL."""
    numbered = (
        select(L.c.id, (func.row_number().over(order_by=L.c.id) - 1).label("n"))
        .where(_due(run_id, as_of))
        .subquery()
    )
    bucket = (numbered.c.n // size).label("bucket")
    query = (
        select(func.min(numbered.c.id), func.max(numbered.c.id), func.count())
        .group_by(bucket)
        .order_by(func.min(numbered.c.id))
    )
    return [(int(a), int(b), int(n)) for a, b, n in conn.execute(query)]


# --- delivery -----------------------------------------------------------------------------
DELIVERY_COLUMNS = (
    L.c.id,
    L.c.customer_id,
    L.c.occurrence_key,
    L.c.template,
    L.c.email,
    L.c.locale,
    L.c.timezone,
    L.c.context,
    L.c.variant,
)


@dataclass(frozen=True)
class Outcome:
    """What became of one ledger row's send."""

    send_id: int
    status: LedgerStatus  # sent, failed, unknown, or skipped (suppressed since planning, sandbox)
    message_id: str | None = None
    http_status: int | None = None
    error: str | None = None
    retryable: bool | None = None
    reason: SkipReason | FailReason | None = None


def mark_interrupted(conn: Connection, run_id: int, first: int, last: int, attempt: str) -> int:
    """Rows another attempt left in `sending` may have been sent: they become `unknown`."""
    return conn.execute(
        update(L)
        .where(
            L.c.run_id == run_id,
            L.c.id.between(first, last),
            L.c.status == LedgerStatus.SENDING,
            L.c.claimed_by != attempt,
        )
        .values(status=LedgerStatus.UNKNOWN, reason=FailReason.INTERRUPTED)
    ).rowcount


def claim(
    conn: Connection,
    run_id: int,
    first: int,
    last: int,
    as_of: datetime,
    attempt: str,
    now: datetime,
    limit: int,
) -> list[Row[Any]]:
    """Atomically move up to `limit` due rows to `sending` for this attempt; returns them.

    The UPDATE re-checks `status = 'planned'`, so two attempts racing for the same rows never
    both win one (PostgreSQL re-evaluates the predicate after a concurrent update).
    """
    ids = list(
        conn.execute(
            select(L.c.id)
            .where(_due(run_id, as_of), L.c.id.between(first, last))
            .order_by(L.c.id)
            .limit(limit)
        ).scalars()
    )
    if not ids:
        return []
    statement = (
        update(L)
        .where(is_in(conn, L.c.id, ids), L.c.status == LedgerStatus.PLANNED)
        .values(
            status=LedgerStatus.SENDING,
            claimed_by=attempt,
            claimed_at=now,
            attempts=L.c.attempts + 1,
            reason=None,
        )
        .returning(*DELIVERY_COLUMNS)
    )
    return sorted(conn.execute(statement), key=lambda row: row.id)


def record(conn: Connection, outcomes: Sequence[Outcome], attempt: str, now: datetime) -> None:
    """Store outcomes in bulk. Only rows this attempt claimed are touched. Outcomes alike but
    for the row (a bulk request's rows) are stored with one UPDATE."""
    alike: dict[tuple[Any, ...], list[int]] = {}
    for o in outcomes:
        key = (o.status, o.reason, o.message_id, o.http_status, o.error, o.retryable)
        alike.setdefault(key, []).append(o.send_id)
    single = [(key, ids) for key, ids in alike.items() if len(ids) == 1]
    claimed = (
        L.c.claimed_by == attempt,
        or_(L.c.status == LedgerStatus.SENDING, L.c.status == LedgerStatus.UNKNOWN),
    )
    for (status, reason, message_id, http_status, error, retryable), ids in alike.items():
        if len(ids) == 1:
            continue
        for part in chunked(ids):
            conn.execute(
                update(L)
                .where(is_in(conn, L.c.id, part), *claimed)
                .values(
                    status=status,
                    reason=reason,
                    message_id=message_id,
                    http_status=http_status,
                    error=error,
                    retryable=retryable,
                    sent_at=now if status == LedgerStatus.SENT else None,
                )
            )
    if not single:
        return
    statement = (
        update(L)
        .where(L.c.id == bindparam("b_id"), *claimed)  # no IN with executemany
        .values(
            status=bindparam("b_status"),
            reason=bindparam("b_reason"),
            message_id=bindparam("b_message_id"),
            http_status=bindparam("b_http_status"),
            error=bindparam("b_error"),
            retryable=bindparam("b_retryable"),
            sent_at=bindparam("b_sent_at"),
        )
    )
    conn.execute(
        statement,
        [
            {
                "b_id": ids[0],
                "b_status": status,
                "b_reason": reason,
                "b_message_id": message_id,
                "b_http_status": http_status,
                "b_error": error,
                "b_retryable": retryable,
                "b_sent_at": now if status == LedgerStatus.SENT else None,
            }
            for (status, reason, message_id, http_status, error, retryable), ids in single
        ],
    )


def release(conn: Connection, ids: Sequence[int], attempt: str) -> None:
    """Claimed rows that surely were not sent go back to `planned`."""
    for part in chunked(list(ids)):
        conn.execute(
            update(L)
            .where(
                is_in(conn, L.c.id, part),
                L.c.claimed_by == attempt,
                # a rival attempt may have marked them
                L.c.status.in_((LedgerStatus.SENDING, LedgerStatus.UNKNOWN)),
            )
            .values(
                status=LedgerStatus.PLANNED,
                reason=None,
                claimed_by=None,
                claimed_at=None,
                attempts=L.c.attempts - 1,
            )
        )


def mark_run_interrupted(conn: Connection, run_id: int) -> int:
    """At finalize every attempt has ended: whatever is still `sending` is `unknown`."""
    return conn.execute(
        update(L)
        .where(L.c.run_id == run_id, L.c.status == LedgerStatus.SENDING)
        .values(status=LedgerStatus.UNKNOWN, reason=FailReason.INTERRUPTED)
    ).rowcount


def run_counts(conn: Connection, run_id: int, as_of: datetime) -> dict[str, Any]:
    """Outcome counts of the rows a run owns.

    `planned` is every row the run means to send: sent + failed + unknown + sending + pending
    (due, not yet delivered) + waiting (outside the customer's send window until later).
    """
    counts: dict[str, Any] = dict.fromkeys(
        ("planned", "sent", "failed", "unknown", "sending", "pending", "waiting"), 0
    )
    counts["skipped"] = {}
    waiting = and_(L.c.status == LedgerStatus.PLANNED, L.c.send_after > as_of).label("waiting")
    query = (
        select(L.c.status, L.c.reason, waiting, func.count())
        .where(L.c.run_id == run_id)
        .group_by(L.c.status, L.c.reason, waiting)
    )
    for status, reason, is_waiting, n in conn.execute(query):
        if status == LedgerStatus.SKIPPED:
            counts["skipped"][reason] = counts["skipped"].get(reason, 0) + n
        elif status == LedgerStatus.PLANNED:
            counts["waiting" if is_waiting else "pending"] += n
        else:
            counts[status] += n
    counts["planned"] = sum(
        counts[k] for k in ("sent", "failed", "unknown", "sending", "pending", "waiting")
    )
    return counts


# --- approval -----------------------------------------------------------------------------
def planned_rows(conn: Connection, run_id: int, limit: int) -> list[Row[Any]]:
    """The first `limit` rows the run will send (due now or waiting), to preview."""
    query = (
        select(*DELIVERY_COLUMNS)
        .where(L.c.run_id == run_id, L.c.status == LedgerStatus.PLANNED)
        .order_by(L.c.id)
        .limit(limit)
    )
    return list(conn.execute(query))


def release_planned(conn: Connection, run_id: int) -> int:
    """A run that will not send (rejected, or its approval expired) lets go of its planned rows:
    they no longer count towards frequency caps, and a later run plans them afresh."""
    return conn.execute(
        delete(L).where(L.c.run_id == run_id, L.c.status == LedgerStatus.PLANNED)
    ).rowcount
