"""Simulated orders after the demo's emails, with a treatment effect against the holdout.

The demo's customers are generated and its emails written to files, so nobody ever orders
because of one. For a dashboard that tells the retention story, this places one order for
about `EMAILED` of the emailed customers and `HELD_OUT` of the held-out ones (the holdout
rows of the same runs), so the Campaigns page shows conversions, revenue and an uplift of
about five points with its interval.

An order is dated between the email (for the holdout: when it would have gone out) and `now`,
never later, so no order is in the future. An emailed customer's order placed after their
first click on the email carries its UTM fields (`utm_medium` email, `utm_campaign` the
campaign, `utm_content` the variant), as if placed through the link, so the report attributes
it by the last click; the others carry none and go by the conversion window. Simulated
orders are told apart from real ones by their id: `SIMULATED_ORDER_IDS` plus the ledger row's
id. Adding them again changes nothing, and `DELETE FROM orders WHERE id >= 1000000000000`
removes them all. Deterministic by seed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, and_, func, or_, select

from lifecycle.core.render import UtmSettings
from lifecycle.reporting.queries import SIMULATED_ORDER_IDS
from lifecycle.store import dialect, schema
from lifecycle.store.states import LedgerStatus, SkipReason

EMAILED = 0.10  # of emailed customers, one order within the window
HELD_OUT = 0.04  # of held-out customers
WINDOW = timedelta(days=7)  # the dashboard's default conversion window
UTM = UtmSettings()  # the default source and medium of the emails' links


@dataclass(frozen=True)
class SimulatedOrders:
    emailed: int  # orders by emailed customers
    held_out: int  # orders by held-out customers
    revenue: float


def _uniform(seed: int, row_id: int, salt: str) -> float:
    digest = hashlib.blake2b(f"{seed}:{row_id}:{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def simulate_orders(engine: Engine, *, now: datetime, seed: int = 7) -> SimulatedOrders:
    """Add the simulated orders of every sent and held-out ledger row that has none yet."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC)
    ledger = schema.send_ledger
    sent = ledger.c.status == LedgerStatus.SENT
    holdout = and_(ledger.c.status == LedgerStatus.SKIPPED, ledger.c.reason == SkipReason.HOLDOUT)
    start = func.coalesce(ledger.c.sent_at, ledger.c.send_after, ledger.c.planned_at)
    query = select(
        ledger.c.id,
        ledger.c.customer_id,
        sent.label("sent"),
        start.label("start"),
        ledger.c.campaign_id,
        ledger.c.variant,
    )
    existing = select(schema.orders.c.id).where(schema.orders.c.id >= SIMULATED_ORDER_IDS)
    events = schema.engagement_events
    first_clicks = (
        select(events.c.send_id, func.min(events.c.occurred_at))
        .where(events.c.event == "click", events.c.send_id.is_not(None))
        .group_by(events.c.send_id)
    )
    with engine.connect() as conn:
        rows = conn.execute(query.where(or_(sent, holdout))).all()
        done = {order_id - SIMULATED_ORDER_IDS for order_id in conn.execute(existing).scalars()}
        clicked = {send_id: _aware(at) for send_id, at in conn.execute(first_clicks)}
    orders, emailed, held_out, revenue = [], 0, 0, 0.0
    for row_id, customer_id, was_sent, started, campaign_id, variant in rows:
        started = _aware(started)
        chance = EMAILED if was_sent else HELD_OUT
        if row_id in done or started >= now or _uniform(seed, row_id, "buys") >= chance:
            continue
        span = min(now - started, WINDOW)
        amount = round(15 + 110 * _uniform(seed, row_id, "amount"), 2)
        placed_at = started + span * (0.05 + 0.9 * _uniform(seed, row_id, "when"))
        through_link = was_sent and clicked.get(row_id, placed_at) < placed_at
        orders.append(
            {
                "id": SIMULATED_ORDER_IDS + row_id,
                "customer_id": customer_id,
                "placed_at": placed_at,
                "delivered_at": None,
                "amount": amount,
                "currency": "USD",
                "status": "placed",
                "utm_source": UTM.source if through_link else None,
                "utm_medium": UTM.medium if through_link else None,
                "utm_campaign": campaign_id if through_link else None,
                "utm_content": variant if through_link else None,
            }
        )
        emailed, held_out = emailed + bool(was_sent), held_out + (not was_sent)
        revenue += amount
    if orders:
        statement = dialect.insert(engine, schema.orders).on_conflict_do_nothing(
            index_elements=["id"]
        )
        with engine.begin() as conn:
            conn.execute(statement, orders)
    return SimulatedOrders(emailed, held_out, round(revenue, 2))
