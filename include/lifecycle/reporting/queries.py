"""Everything the report reads from the warehouse, in one place.

Our own tables (`campaign_runs`, `send_ledger`, `engagement_events`) are read with SQLAlchemy
Core; orders and signups come from `include/sql/report_orders.sql` and
`report_customers.sql`, which a deployment adapts to its own warehouse. Dry runs are left out
everywhere: they send nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    Numeric,
    Select,
    String,
    and_,
    case,
    distinct,
    false,
    func,
    or_,
    select,
    text,
    type_coerce,
)

from lifecycle.core.config import Settings
from lifecycle.store import schema
from lifecycle.store.states import LedgerStatus, RunStatus, SkipReason

# SendGrid event -> funnel step. Counting distinct sends per step makes duplicates harmless.
EVENT_STEPS = {
    "delivered": "delivered",
    "open": "opened",
    "click": "clicked",
    "bounce": "bounced",
    "dropped": "bounced",
    "unsubscribe": "unsubscribed",
    "group_unsubscribe": "unsubscribed",
    "spamreport": "spam_reports",
}


# Optional columns of report_orders.sql: the UTM parameters of the link an order came through.
ORDER_UTM = ("utm_medium", "utm_campaign", "utm_content")


class ReportError(ValueError):
    """The warehouse cannot give a sound report (e.g. orders in several currencies)."""


@dataclass(frozen=True)
class RunRow:
    id: int
    campaign_id: str
    run_key: str
    as_of: datetime
    started_at: datetime
    status: RunStatus


@dataclass(frozen=True)
class LedgerCount:
    """Ledger rows of one run in one status (and reason)."""

    run_id: int
    status: LedgerStatus
    reason: str | None
    count: int


@dataclass(frozen=True)
class StepCount:
    """Distinct sends of one run with at least one event of a funnel step."""

    run_id: int
    step: str
    count: int


def campaign_ids(engine: Engine) -> list[str]:
    """Campaigns with at least one real (not dry) run."""
    r = schema.campaign_runs
    query = select(r.c.campaign_id).where(r.c.dry_run == false()).distinct()
    with engine.connect() as conn:
        return sorted(conn.execute(query).scalars())


def real_runs(conn: Connection, campaign_id: str | None, as_of: datetime) -> list[RunRow]:
    """Runs started by as_of, newest first."""
    r = schema.campaign_runs
    query = (
        select(r.c.id, r.c.campaign_id, r.c.run_key, r.c.as_of, r.c.started_at, r.c.status)
        .where(r.c.dry_run == false(), r.c.started_at <= as_of)
        .order_by(r.c.started_at.desc(), r.c.id.desc())
    )
    if campaign_id is not None:
        query = query.where(r.c.campaign_id == campaign_id)
    return [
        RunRow(run_id, campaign, run_key, run_as_of, started_at, RunStatus(status))
        for run_id, campaign, run_key, run_as_of, started_at, status in conn.execute(query)
    ]


def ledger_counts(conn: Connection, run_ids: Sequence[int]) -> list[LedgerCount]:
    ledger = schema.send_ledger
    query = (
        select(ledger.c.run_id, ledger.c.status, ledger.c.reason, func.count())
        .where(ledger.c.run_id.in_(run_ids))
        .group_by(ledger.c.run_id, ledger.c.status, ledger.c.reason)
    )
    return [
        LedgerCount(run_id, LedgerStatus(status), reason, count)
        for run_id, status, reason, count in conn.execute(query)
    ]


def step_counts(conn: Connection, run_ids: Sequence[int], as_of: datetime) -> list[StepCount]:
    """Funnel steps past sending, from the events that occurred by as_of."""
    ledger, events = schema.send_ledger, schema.engagement_events
    step = case(EVENT_STEPS, value=events.c.event)
    query = (
        select(ledger.c.run_id, step, func.count(distinct(events.c.send_id)))
        .select_from(events.join(ledger, ledger.c.id == events.c.send_id))
        .where(
            ledger.c.run_id.in_(run_ids),
            events.c.event.in_(EVENT_STEPS),
            events.c.occurred_at <= as_of,
        )
        .group_by(ledger.c.run_id, step)
    )
    return [StepCount(run_id, name, count) for run_id, name, count in conn.execute(query)]


def variant_step_counts(
    conn: Connection, run_ids: Sequence[int], as_of: datetime
) -> list[tuple[str, str, str, int]]:
    """(campaign, variant, funnel step, distinct sends) from the events that occurred by as_of,
    for the rows sent with a variant."""
    ledger, events = schema.send_ledger, schema.engagement_events
    step = case(EVENT_STEPS, value=events.c.event)
    query = (
        select(ledger.c.campaign_id, ledger.c.variant, step, func.count(distinct(events.c.send_id)))
        .select_from(events.join(ledger, ledger.c.id == events.c.send_id))
        .where(
            ledger.c.run_id.in_(run_ids),
            ledger.c.variant.is_not(None),
            events.c.event.in_(EVENT_STEPS),
            events.c.occurred_at <= as_of,
        )
        .group_by(ledger.c.campaign_id, ledger.c.variant, step)
    )
    return [
        (campaign, variant, name, count) for campaign, variant, name, count in conn.execute(query)
    ]


def sent_and_holdout(conn: Connection, run_ids: Sequence[int]) -> pd.DataFrame:
    """Sent rows and holdout rows (skipped for `holdout`), with the instant their conversion
    clock starts: columns send_id, run_id, customer_id, sent (bool), start (UTC), variant.

    A holdout row's clock starts when its email would have gone out (`send_after`, else
    `planned_at`)."""
    ledger = schema.send_ledger
    sent = ledger.c.status == LedgerStatus.SENT
    holdout = and_(ledger.c.status == LedgerStatus.SKIPPED, ledger.c.reason == SkipReason.HOLDOUT)
    # Raw values, parsed in one vectorized step below (text on SQLite).
    start = func.coalesce(ledger.c.sent_at, ledger.c.send_after, ledger.c.planned_at, type_=String)
    rows = conn.execute(
        select(
            ledger.c.id,
            ledger.c.run_id,
            ledger.c.customer_id,
            sent.label("sent"),
            start.label("start"),
            ledger.c.variant,
        ).where(ledger.c.run_id.in_(run_ids), or_(sent, holdout))
    ).all()
    columns = ["send_id", "run_id", "customer_id", "sent", "start", "variant"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["sent"] = frame["sent"].astype(bool)
    frame["start"] = _utc(frame["start"])
    return frame


def orders(conn: Connection, settings: Settings, as_of: datetime) -> pd.DataFrame:
    """Revenue orders placed up to as_of, from include/sql/report_orders.sql: columns
    customer_id, placed_at (UTC), amount, currency (one for all, else ReportError), and
    ORDER_UTM (None where the query does not select them)."""
    path = Path(settings.sql_dir) / "report_orders.sql"
    # Times come back raw (text on SQLite) and are parsed in one vectorized step: converting
    # hundreds of thousands of rows one by one dominated the report's run time.
    query = text(_sql(path)).columns(customer_id=BigInteger, amount=Numeric(asdecimal=False))
    result = conn.execute(query)
    optional = list(result.keys())[4:]
    frame = pd.DataFrame(
        result.all(), columns=["customer_id", "placed_at", "amount", "currency", *optional]
    )
    for name in ORDER_UTM:
        if name not in frame:
            frame[name] = None
    frame["customer_id"] = frame["customer_id"].astype("int64")
    frame["placed_at"] = _utc(frame["placed_at"])
    frame["amount"] = frame["amount"].astype(float)
    currencies = sorted(frame["currency"].dropna().unique())
    if len(currencies) > 1:
        raise ReportError(
            f"orders are in several currencies ({', '.join(currencies)}): revenue cannot be "
            f"added up; convert the amounts to one currency in {path}"
        )
    return frame[frame["placed_at"] <= as_of].reset_index(drop=True)


def signups(conn: Connection, settings: Settings, as_of: datetime) -> pd.DataFrame:
    """Customers signed up by as_of, from include/sql/report_customers.sql: columns
    customer_id, signup_at (UTC)."""
    query = text(_sql(Path(settings.sql_dir) / "report_customers.sql"))
    frame = pd.DataFrame(conn.execute(query).all(), columns=["customer_id", "signup_at"])
    frame["customer_id"] = frame["customer_id"].astype("int64")
    frame["signup_at"] = _utc(frame["signup_at"])
    return frame[frame["signup_at"] <= as_of].reset_index(drop=True)


# Orders the demo simulates after its emails have ids from here on (lifecycle.devtools.orders).
SIMULATED_ORDER_IDS = 10**12


def simulated_orders(conn: Connection, as_of: datetime) -> int:
    """Orders the demo simulated, placed by as_of. Asked only of a warehouse with simulated
    events (the demo's): elsewhere the `orders` table may not exist."""
    orders = schema.orders
    query = select(func.count()).where(
        orders.c.id >= SIMULATED_ORDER_IDS, orders.c.placed_at <= as_of
    )
    return conn.execute(query).scalar_one()


def simulated_events(conn: Connection, campaign_id: str | None) -> int:
    """Engagement events generated for the demo, not real."""
    events = schema.engagement_events
    query = select(func.count()).select_from(events).where(events.c.simulated)
    if campaign_id is not None:
        query = query.where(events.c.campaign_id == campaign_id)
    return conn.execute(query).scalar_one()


def sent_times(
    conn: Connection, since: datetime, as_of: datetime, campaign_id: str | None
) -> list[datetime]:
    """When each email of a real run was sent, between since and as_of."""
    ledger = schema.send_ledger
    query = select(ledger.c.sent_at).where(
        _in_real_runs(campaign_id),
        ledger.c.status == LedgerStatus.SENT,
        ledger.c.sent_at.between(since, as_of),
    )
    return list(conn.execute(query).scalars())


def opens_and_clicks(
    conn: Connection, since: datetime, as_of: datetime, campaign_id: str | None
) -> list[tuple[str, int, datetime]]:
    """(event, send id, occurred at) of the open and click events of real runs' sends."""
    ledger, events = schema.send_ledger, schema.engagement_events
    query = (
        select(events.c.event, events.c.send_id, events.c.occurred_at)
        .select_from(events.join(ledger, ledger.c.id == events.c.send_id))
        .where(
            _in_real_runs(campaign_id),
            events.c.event.in_(["open", "click"]),
            events.c.occurred_at.between(since, as_of),
        )
    )
    return [(event, send_id, occurred_at) for event, send_id, occurred_at in conn.execute(query)]


def clicks(conn: Connection, as_of: datetime) -> pd.DataFrame:
    """The click events by as_of on the sent emails of every real run (whatever the report's
    campaign, so an order goes to the same email in every report): columns send_id,
    customer_id, campaign_id, variant, clicked_at (UTC)."""
    ledger, events = schema.send_ledger, schema.engagement_events
    query = (
        select(
            ledger.c.id,
            ledger.c.customer_id,
            ledger.c.campaign_id,
            ledger.c.variant,
            type_coerce(events.c.occurred_at, String),  # raw, parsed below
        )
        .select_from(events.join(ledger, ledger.c.id == events.c.send_id))
        .where(
            _in_real_runs(None),
            ledger.c.status == LedgerStatus.SENT,
            events.c.event == "click",
            events.c.occurred_at <= as_of,
        )
    )
    columns = ["send_id", "customer_id", "campaign_id", "variant", "clicked_at"]
    frame = pd.DataFrame(conn.execute(query).all(), columns=columns)
    frame["customer_id"] = frame["customer_id"].astype("int64")
    frame["clicked_at"] = _utc(frame["clicked_at"])
    return frame


def _in_real_runs(campaign_id: str | None) -> ColumnElement[bool]:
    runs = schema.campaign_runs
    real: Select[tuple[int]] = select(runs.c.id).where(runs.c.dry_run == false())
    if campaign_id is not None:
        real = real.where(runs.c.campaign_id == campaign_id)
    return schema.send_ledger.c.run_id.in_(real.scalar_subquery())


def _sql(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"report query {path} cannot be read: {exc.strerror}") from None


def _utc(values: pd.Series) -> pd.Series:
    """UTC timestamps from aware datetimes (PostgreSQL) or naive UTC text (SQLite)."""
    return pd.to_datetime(values, utc=True, format="ISO8601")
