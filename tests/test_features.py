"""Feature snapshots and local-time helpers, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from source_rows import add_customer, add_order, utc
from sqlalchemy import Engine, select

from lifecycle.core import features, localtime
from lifecycle.core.config import Settings, load_settings
from lifecycle.store import schema


@pytest.fixture
def settings(warehouse_url: str) -> Settings:
    return load_settings(warehouse_url=warehouse_url)


def snapshot(engine: Engine) -> pd.DataFrame:
    with engine.connect() as conn:
        rows = conn.execute(select(schema.customer_features)).mappings().all()
    return pd.DataFrame([dict(row) for row in rows]).set_index("customer_id").sort_index()


@pytest.mark.parametrize("name", ["America/New_York", "Europe/London", "Pacific/Kiritimati"])
def test_offset_periods_agree_with_zoneinfo(name: str) -> None:
    periods = localtime.offset_periods(name)
    zone = ZoneInfo(name)
    instant = localtime.COVER_FROM
    while instant < localtime.COVER_UNTIL:
        expected = instant.astimezone(zone).utcoffset().total_seconds()
        current = [seconds for start, seconds in periods if start <= instant][-1]
        assert current == expected, instant
        instant += timedelta(hours=61, minutes=7)


def test_materialize_features(engine: Engine, settings: Settings) -> None:
    as_of = utc(2026, 6, 1, 12)
    # 1: first order today, in Tokyo; birthday tomorrow.
    add_customer(
        engine, 1, timezone="Asia/Tokyo", signup_at=utc(2026, 5, 1), birth_date=date(1990, 6, 2)
    )
    add_order(engine, 1, 1, placed_at=utc(2026, 6, 1, 1), amount=30)
    # 2: three orders (one cancelled, one returned), platinum, born 29 Feb.
    add_customer(
        engine, 2, loyalty_points=15_000, birth_date=date(2000, 2, 29), signup_at=utc(2024, 1, 1)
    )
    add_order(engine, 2, 2, placed_at=utc(2025, 1, 10), amount=100)
    add_order(
        engine,
        3,
        2,
        placed_at=utc(2026, 5, 1),
        delivered_at=utc(2026, 5, 5),
        status="delivered",
        amount=50,
    )
    add_order(engine, 4, 2, placed_at=utc(2026, 5, 20), status="returned", amount=70)
    add_order(engine, 5, 2, placed_at=utc(2026, 5, 30), status="cancelled", amount=500)
    # 3: no orders, unknown timezone, no email; 4: signs up after as_of.
    add_customer(engine, 3, timezone="Nowhere/Special", email=None, signup_at=utc(2026, 5, 31))
    add_customer(engine, 4, signup_at=utc(2026, 6, 2))

    result = features.materialize(engine, as_of, settings)

    assert result.row_count == 3
    assert result.as_of == as_of
    assert result.warnings == {"unknown_timezone": 1, "missing_email": 1}
    f = snapshot(engine)
    assert list(f.index) == [1, 2, 3]
    one, two, three = f.loc[1], f.loc[2], f.loc[3]
    assert (one.order_count, one.days_since_last_order, one.total_spend) == (1, 0, 30.0)
    assert one.first_order_at == one.last_order_at == utc(2026, 6, 1, 1)
    assert (one.local_date, one.next_birthday, one.tenure_days) == (
        date(2026, 6, 1),
        date(2026, 6, 2),
        31,
    )
    assert (two.order_count, two.total_spend, two.avg_spend) == (3, 150.0, 75.0)
    assert two.first_order_at == utc(2025, 1, 10)
    assert two.last_order_at == utc(2026, 5, 20)
    assert (two.days_since_last_order, two.delivered_orders_30d) == (12, 1)
    assert (two.loyalty_tier, two.next_birthday) == ("platinum", date(2027, 2, 28))
    assert (three.timezone, three.timezone_valid, three.email_valid) == ("UTC", False, False)
    assert three.email_reason == "missing_email"
    assert (three.order_count, three.total_spend) == (0, 0.0)
    assert pd.isna(three.days_since_last_order) and three.rfm_segment is None


def test_materialize_is_idempotent_and_logged(engine: Engine, settings: Settings) -> None:
    add_customer(engine, 1)
    add_order(engine, 1, 1, placed_at=utc(2026, 1, 1))
    as_of = utc(2026, 6, 1)
    first = features.materialize(engine, as_of, settings)
    rows = snapshot(engine)
    second = features.materialize(engine, as_of, settings)
    assert first == second
    pd.testing.assert_frame_equal(rows, snapshot(engine))
    latest = features.latest_snapshot(engine)
    assert latest is not None and latest.as_of == as_of and latest.row_count == 1


def test_rfm_scores_and_named_segments(engine: Engine, settings: Settings) -> None:
    as_of = utc(2026, 6, 1)
    # Customer n (1..10) ordered n times, last n*20 days ago... so customer 1 is the most
    # recent but least frequent; customer 10 the most frequent but least recent.
    order_id = 0
    for n in range(1, 11):
        add_customer(engine, n)
        for k in range(n):
            order_id += 1
            placed = as_of - timedelta(days=20 * n + k)
            add_order(engine, order_id, n, placed_at=placed, amount=10)
    add_customer(engine, 11)  # no orders
    features.materialize(engine, as_of, settings)
    f = snapshot(engine)
    # Ten distinct values in quintiles: two customers per score.
    assert f.loc[1:10, "rfm_recency"].tolist() == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    assert f.loc[1:10, "rfm_frequency"].tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert f.loc[1:10, "rfm_monetary"].tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert f.loc[1, "rfm_score"] == "511" and f.loc[10, "rfm_score"] == "155"
    assert f.loc[[1, 3, 5, 8, 10], "rfm_segment"].tolist() == [
        "New customers",
        "Potential loyalist",
        "Need attention",
        "At risk",
        "Can't lose them",
    ]
    assert pd.isna(f.loc[11, "rfm_recency"]) and f.loc[11, "rfm_segment"] is None


def test_rfm_ties_share_a_score(engine: Engine, settings: Settings) -> None:
    as_of = utc(2026, 6, 1)
    for n in range(1, 7):
        add_customer(engine, n)
        add_order(engine, n, n, placed_at=utc(2026, 5, 1), amount=10 if n < 6 else 99)
    features.materialize(engine, as_of, settings)
    f = snapshot(engine)
    assert set(f["rfm_recency"]) == {1}
    assert set(f["rfm_frequency"]) == {1}
    assert f["rfm_monetary"].tolist() == [1, 1, 1, 1, 1, 5]


@pytest.mark.parametrize(
    ("as_of", "expected"),
    [
        (utc(2027, 2, 28, 12), date(2027, 2, 28)),  # common year: today, on 28 February
        (utc(2027, 3, 1, 12), date(2028, 2, 29)),
        (utc(2028, 2, 28, 12), date(2028, 2, 29)),
        (utc(2027, 12, 31, 12), date(2028, 2, 29)),
    ],
)
def test_next_birthday_of_29_february(
    engine: Engine, settings: Settings, as_of: datetime, expected: date
) -> None:
    add_customer(engine, 1, birth_date=date(2000, 2, 29))
    features.materialize(engine, as_of, settings)
    assert snapshot(engine).loc[1, "next_birthday"] == expected


@pytest.mark.postgres
def test_a_snapshot_built_in_id_ranges_equals_the_one_built_whole_and_appears_at_once(
    pg_url: str,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from lifecycle.devtools import seed
    from lifecycle.store import warehouse

    engine = warehouse.make_engine(pg_url)
    settings = load_settings(warehouse_url=pg_url)
    as_of = utc(2026, 11, 24, 9)
    seed.seed(engine, 900, seed=5, as_of=as_of)
    features.materialize(engine, as_of - timedelta(days=30), settings)  # the older snapshot
    older = snapshot(engine)
    features.materialize(engine, as_of, settings)
    whole = snapshot(engine)
    features.materialize(engine, as_of - timedelta(days=30), settings)

    ranges = features.partitions(engine, as_of, settings, 200)
    assert len(ranges) == 5
    with ThreadPoolExecutor(3) as pool:
        written = list(
            pool.map(lambda r: features.materialize_range(engine, as_of, settings, r), ranges)
        )
    features.materialize_range(engine, as_of, settings, ranges[2])  # a retried range
    assert sum(written) == len(whole)  # no customer dropped or twice across ranges
    pd.testing.assert_frame_equal(snapshot(engine), older)  # readers still see the old one
    published = features.publish(engine, as_of)
    assert published.row_count == len(whole)
    pd.testing.assert_frame_equal(snapshot(engine), whole)  # RFM scores included
    with engine.connect() as conn:
        staged = conn.execute(select(schema.customer_features_next)).all()
    assert staged == []
    engine.dispose()
