"""`unknown` ledger rows: resolved from SendGrid's own events, or requeued once none came.

A row is `unknown` when its request may have reached SendGrid (a crash, a timeout, a 504).
SendGrid emits events only for messages it accepted, and every event carries our custom args,
so an event for the row proves it was sent: the row becomes `sent` and keeps the evidence
(`resolved_event_id`, `resolved_by`, `resolved_at`). The event must match the row on
`send_id`, campaign and address (case-insensitively), so an event of another warehouse that
shares the SendGrid account cannot resolve ours; simulated (demo) events prove nothing.

With the signed event webhook configured, a row still without any event a quiet period after
its attempt (24 h by default) never reached SendGrid: it is requeue-able. Without the webhook
no event can tell, so only a human naming rows requeues them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, bindparam, false, func, select, update

from lifecycle.store.ledger import chunked, is_in
from lifecycle.store.schema import engagement_events, send_ledger
from lifecycle.store.states import LedgerStatus

L, E = send_ledger, engagement_events

# SendGrid's events for a message it accepted (queued); none is emitted for a refused request.
ACCEPTED_EVENTS = (
    "processed",
    "delivered",
    "deferred",
    "bounce",
    "dropped",
    "open",
    "click",
    "spamreport",
    "unsubscribe",
    "group_unsubscribe",
    "group_resubscribe",
)


@dataclass(frozen=True)
class UnknownStates:
    """Rows whose send was once unknown, by what became of them."""

    resolved: int  # SendGrid's events showed it accepted them: now `sent`
    awaiting_events: int  # still `unknown`, within the quiet period (or no webhook to wait for)
    requeueable: int  # still `unknown`, no event for a whole quiet period after the attempt

    @property
    def unresolved(self) -> int:
        return self.awaiting_events + self.requeueable

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _scope(
    campaign_id: str | None, run_id: int | None, send_ids: Sequence[int] | None
) -> list[ColumnElement[bool]]:
    where = []
    if campaign_id is not None:
        where.append(L.c.campaign_id == campaign_id)
    if run_id is not None:
        where.append(L.c.run_id == run_id)
    if send_ids is not None:
        where.append(L.c.id.in_(send_ids))
    return where


def _proof() -> ColumnElement[bool]:
    return and_(
        E.c.send_id == L.c.id,
        E.c.campaign_id == L.c.campaign_id,
        func.lower(E.c.email) == func.lower(L.c.email),
        E.c.event.in_(ACCEPTED_EVENTS),
        E.c.simulated.is_(False),
    )


def resolve(
    conn: Connection,
    *,
    campaign_id: str | None = None,
    run_id: int | None = None,
    send_ids: Sequence[int] | None = None,
) -> int:
    """`unknown` rows (in the given scope) with an event proving SendGrid accepted them become
    `sent`, with the earliest such event as evidence. Returns how many."""
    if send_ids is not None and not send_ids:
        return 0
    proofs: dict[int, dict[str, Any]] = {}
    for part in [None] if send_ids is None else chunked(sorted(set(send_ids))):
        query = (
            select(L.c.id, E.c.id.label("event_id"), E.c.event, E.c.occurred_at, E.c.message_id)
            .join(E, _proof())
            .where(L.c.status == LedgerStatus.UNKNOWN, *_scope(campaign_id, run_id, part))
            .order_by(L.c.id, E.c.occurred_at, E.c.id)
        )
        for row in conn.execute(query):
            proofs.setdefault(
                row.id,
                {
                    "b_id": row.id,
                    "b_event_id": row.event_id,
                    "b_event": row.event,
                    "b_at": row.occurred_at,
                    "b_message_id": (row.message_id or "")[:64] or None,
                },
            )
    if not proofs:
        return 0
    statement = (
        update(L)
        .where(L.c.id == bindparam("b_id"), L.c.status == LedgerStatus.UNKNOWN)
        .values(
            status=LedgerStatus.SENT,
            resolved_event_id=bindparam("b_event_id"),
            resolved_by=bindparam("b_event"),
            resolved_at=bindparam("b_at"),
            # the request went out with the attempt; the event only says SendGrid had it
            sent_at=func.coalesce(L.c.claimed_at, bindparam("b_at")),
            message_id=func.coalesce(L.c.message_id, bindparam("b_message_id")),
        )
    )
    return conn.execute(statement, list(proofs.values())).rowcount


def states(
    conn: Connection,
    *,
    requeueable_before: datetime | None,
    campaign_id: str | None = None,
    run_id: int | None = None,
) -> UnknownStates:
    """Counts by state. `requeueable_before`: attempts at or before it waited long enough for
    events (now - quiet period); None when no webhook is configured (nothing is requeue-able)."""
    old = L.c.claimed_at <= requeueable_before if requeueable_before is not None else false()
    query = select(
        func.count().filter(L.c.resolved_event_id.is_not(None)),
        func.count().filter(L.c.status == LedgerStatus.UNKNOWN, ~old),
        func.count().filter(L.c.status == LedgerStatus.UNKNOWN, old),
    ).where(
        *_scope(campaign_id, run_id, None),
        L.c.status.in_((LedgerStatus.UNKNOWN, LedgerStatus.SENT)),
    )
    resolved, awaiting, requeueable = conn.execute(query).one()
    return UnknownStates(int(resolved), int(awaiting), int(requeueable))


def unresolved_ids(
    conn: Connection, campaign_id: str, *, attempted_before: datetime | None
) -> list[int]:
    """Ids of the campaign's `unknown` rows, only those attempted at or before the given time
    when one is given."""
    where = [L.c.campaign_id == campaign_id, L.c.status == LedgerStatus.UNKNOWN]
    if attempted_before is not None:
        where.append(L.c.claimed_at <= attempted_before)
    return list(conn.execute(select(L.c.id).where(*where).order_by(L.c.id)).scalars())


def requeue(
    conn: Connection,
    campaign_id: str,
    ids: Sequence[int],
    *,
    attempted_before: datetime | None = None,
) -> int:
    """These `unknown` rows go back to `planned` (the next run sends them), unless an event
    resolved one meanwhile or, with `attempted_before`, it was attempted after that."""
    where = [L.c.campaign_id == campaign_id, L.c.status == LedgerStatus.UNKNOWN]
    if attempted_before is not None:
        where.append(L.c.claimed_at <= attempted_before)
    total = 0
    for part in chunked(list(ids)):
        total += conn.execute(
            update(L)
            .where(*where, is_in(conn, L.c.id, part))
            .values(status=LedgerStatus.PLANNED, reason=None)
        ).rowcount
    return total
