"""Plausible engagement events for the demo's outbox sends, stored as `simulated = true`.

The outbox transport writes .eml files, so nothing ever reports a delivery, an open or a
click. For a populated demo dashboard this generates them: about 97% delivered, the rest
bounced; of those delivered about 38% opened, a quarter of the openers click, and a few
unsubscribe or report spam. Variants named in `OPENED_BY_VARIANT` open more often (a simulated
A/B response, so the demo's test has a winner). The dashboard and `lifecycle report` label
them as simulated.

Deterministic: the outcome of a send depends only on (seed, ledger row id), so a rerun or a
larger ledger gives every existing send the same events. Sends that already have any event
(real or simulated) are left alone, and inserts ignore an existing natural key, so running it
twice changes nothing. Conversions are never simulated: they come from real orders. Simulated
bounces and unsubscribes do not create suppressions.

Engagement spreads over about three days after a send. A send younger than that at `as_of`
(the demo simulates right after sending) gets all its events anyway, with the delays scaled
down to fit between the send and `as_of`: no event is ever dated after `as_of`.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, exists, select

from lifecycle.store import dialect, schema
from lifecycle.store.states import LedgerStatus

DELIVERED = 0.97
OPENED = 0.38  # of delivered
CLICKED = 0.25  # of opened
UNSUBSCRIBED = 0.004  # of delivered
SPAM_REPORTED = 0.001  # of delivered
CHUNK = 5_000
HORIZON = timedelta(hours=73)  # the longest nominal delay: a late open plus its click
# SIMULATED A/B response, for the demo: sends of these variants open this often instead of
# OPENED, so the demo's subject-line test has a winner (see include/campaigns/winback_ab.yaml).
OPENED_BY_VARIANT = {"personal": 0.55}


@dataclass(frozen=True)
class SimulationResult:
    sends: int  # sends that got events
    events: dict[str, int] = field(default_factory=dict)  # by event type


def _uniform(seed: int, send_id: int, salt: str) -> float:
    digest = hashlib.blake2b(f"{seed}:{send_id}:{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def events_for(seed: int, send: dict, as_of: datetime) -> list[dict]:
    """The simulated events of one sent ledger row (`id`, `sent_at`, ...), in time order."""
    send_id, sent_at = send["id"], send["sent_at"]
    scale = min(1.0, max((as_of - sent_at) / HORIZON, 0.0))

    def u(salt: str) -> float:
        return _uniform(seed, send_id, salt)

    def event(name: str, at: datetime, **extra: object) -> dict:
        occurred = sent_at + (at - sent_at) * scale
        return {"event": name, "occurred_at": occurred, **extra}

    if u("delivered") >= DELIVERED:
        reason = "550 5.1.1 mailbox does not exist (simulated)"
        return [
            event("bounce", sent_at + timedelta(seconds=5 + 55 * u("bounce_at")), reason=reason)
        ]
    delivered_at = sent_at + timedelta(seconds=2 + 28 * u("delivered_at"))
    events = [event("delivered", delivered_at)]
    if u("open") < OPENED_BY_VARIANT.get(send.get("variant") or "", OPENED):
        # Most opens come within hours; an exponential with a 6-hour mean, capped at 3 days.
        delay = min(-6 * math.log(1 - u("open_at")), 72)
        opened_at = delivered_at + timedelta(hours=delay)
        events.append(event("open", opened_at))
        if u("click") < CLICKED:
            url = (
                f"https://shop.example.com/?utm_source=lifecycle&utm_campaign={send['campaign_id']}"
            )
            if send.get("variant"):
                url += f"&utm_content={send['variant']}"
            clicked_at = opened_at + timedelta(minutes=1 + 29 * u("click_at"))
            events.append(event("click", clicked_at, url=url))
    if u("unsubscribe") < UNSUBSCRIBED:
        events.append(event("unsubscribe", delivered_at + timedelta(hours=1 + 23 * u("unsub_at"))))
    if u("spamreport") < SPAM_REPORTED:
        events.append(event("spamreport", delivered_at + timedelta(hours=2 + 46 * u("spam_at"))))
    return sorted(events, key=lambda e: e["occurred_at"])


def simulate_events(
    engine: Engine, *, as_of: datetime, seed: int = 7, campaign_id: str | None = None
) -> SimulationResult:
    """Add simulated events, none later than `as_of`, for every sent row that has none."""
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    as_of = as_of.astimezone(UTC)
    counts: Counter[str] = Counter()
    sends = 0
    for chunk in _sends_without_events(engine, as_of, campaign_id):
        rows: list[dict[str, Any]] = []
        for send in chunk:
            rows.extend(_row(send, event, seed) for event in events_for(seed, send, as_of))
        if rows:
            _insert_ignoring_existing(engine, rows)
        sends += len(chunk)
        counts.update(row["event"] for row in rows)
    return SimulationResult(sends, dict(sorted(counts.items())))


def _sends_without_events(
    engine: Engine, as_of: datetime, campaign_id: str | None
) -> Iterator[list[dict]]:
    ledger, events = schema.send_ledger, schema.engagement_events
    query = (
        select(
            ledger.c.id,
            ledger.c.campaign_id,
            ledger.c.email,
            ledger.c.message_id,
            ledger.c.sent_at,
            ledger.c.variant,
        )
        .where(
            ledger.c.status == LedgerStatus.SENT,
            ledger.c.sent_at <= as_of,
            ~exists().where(events.c.send_id == ledger.c.id),
        )
        .order_by(ledger.c.id)
    )
    if campaign_id is not None:
        query = query.where(ledger.c.campaign_id == campaign_id)
    with engine.connect() as conn:
        # Read everything first: the inserts below must not change what this query sees.
        sends = [dict(row._mapping) for row in conn.execute(query)]
    for start in range(0, len(sends), CHUNK):
        yield sends[start : start + CHUNK]


def _row(send: dict, event: dict, seed: int) -> dict:
    key = hashlib.sha256(f"simulated|{send['id']}|{event['event']}".encode()).hexdigest()
    return {
        "sg_event_id": None,
        "natural_key": key,
        "event": event["event"],
        "email": send["email"],
        "occurred_at": event["occurred_at"],
        "send_id": send["id"],
        "campaign_id": send["campaign_id"],
        "message_id": send["message_id"],
        "url": event.get("url"),
        "reason": event.get("reason"),
        "simulated": True,
        "payload": {"simulated": True, "seed": seed},
        "received_at": event["occurred_at"],
    }


def _insert_ignoring_existing(engine: Engine, rows: list[dict]) -> None:
    table = schema.engagement_events
    statement = dialect.insert(engine, table).on_conflict_do_nothing(index_elements=["natural_key"])
    with engine.begin() as conn:
        conn.execute(statement, rows)
