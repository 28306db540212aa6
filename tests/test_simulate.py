"""Simulated engagement events: plausible, deterministic, idempotent, clearly labelled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, func, insert, select

from lifecycle.devtools import simulate
from lifecycle.store import schema

SENT_AT = datetime(2026, 11, 20, 10, tzinfo=UTC)
AS_OF = SENT_AT + timedelta(days=4)
SENDS = 2_000


def fill_ledger(engine: Engine) -> None:
    rows = [
        {
            "id": i,
            "run_id": 1,
            "campaign_id": "onboarding",
            "occurrence_key": "day0",
            "customer_id": i,
            "status": "sent" if i <= SENDS else "skipped",
            "template": "onboarding/day0",
            "email": f"c{i}@example.com",
            "planned_at": SENT_AT,
            "sent_at": SENT_AT if i <= SENDS else None,
            "message_id": f"outbox-{i}",
        }
        for i in range(1, SENDS + 11)
    ]
    real = {
        "sg_event_id": "real-1",
        "natural_key": "real-1",
        "event": "delivered",
        "occurred_at": SENT_AT,
        "send_id": 1,
        "received_at": SENT_AT,
    }
    with engine.begin() as conn:
        conn.execute(insert(schema.send_ledger), rows)
        conn.execute(insert(schema.engagement_events), [real])


def events(engine: Engine) -> list[dict]:
    e = schema.engagement_events
    with engine.connect() as conn:
        rows = conn.execute(select(e).where(e.c.simulated).order_by(e.c.natural_key))
        return [dict(row._mapping) for row in rows]


def test_plausible_labelled_events_for_sent_rows_only(engine: Engine) -> None:
    fill_ledger(engine)
    result = simulate.simulate_events(engine, as_of=AS_OF, seed=3)
    stored = events(engine)
    assert result.sends == SENDS - 1  # row 1 already has a real event
    assert sum(result.events.values()) == len(stored)
    assert {e["send_id"] for e in stored} <= set(range(2, SENDS + 1))
    assert all(SENT_AT <= e["occurred_at"] <= AS_OF for e in stored)
    by_type: dict[str, set[int]] = {}
    for event in stored:
        by_type.setdefault(event["event"], set()).add(event["send_id"])
    delivered, bounced = len(by_type["delivered"]), len(by_type["bounce"])
    assert delivered + bounced == SENDS - 1
    assert 0.95 < delivered / (SENDS - 1) < 0.99
    assert 0.30 < len(by_type["open"]) / delivered < 0.46
    assert by_type["click"] <= by_type["open"]
    assert by_type["open"] <= by_type["delivered"]
    assert all(e["payload"] == {"simulated": True, "seed": 3} for e in stored)


def test_deterministic_and_idempotent(engine: Engine) -> None:
    fill_ledger(engine)
    simulate.simulate_events(engine, as_of=AS_OF, seed=3)
    first = [(e["natural_key"], e["event"], e["occurred_at"]) for e in events(engine)]
    again = simulate.simulate_events(engine, as_of=AS_OF, seed=3)
    assert again.sends == 0 and again.events == {}
    with engine.begin() as conn:
        conn.execute(schema.engagement_events.delete().where(schema.engagement_events.c.simulated))
    simulate.simulate_events(engine, as_of=AS_OF, seed=3)
    assert [(e["natural_key"], e["event"], e["occurred_at"]) for e in events(engine)] == first


def test_young_sends_get_all_their_events_but_none_after_as_of(engine: Engine) -> None:
    fill_ledger(engine)
    early = SENT_AT + timedelta(minutes=10)
    result = simulate.simulate_events(engine, as_of=early, seed=3)
    e = schema.engagement_events
    with engine.connect() as conn:
        latest = conn.execute(select(func.max(e.c.occurred_at)).where(e.c.simulated)).scalar_one()
    assert latest <= early
    assert result.events["delivered"] + result.events["bounce"] == SENDS - 1
    assert result.events["open"] > 0.3 * result.events["delivered"]
