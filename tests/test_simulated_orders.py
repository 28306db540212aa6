"""Simulated orders for the demo: after the emails, more among the emailed than in the holdout,
never in the future, told apart by their ids, idempotent; and the report counts them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pandas as pd
from campaign_results import fill_campaign_results
from sqlalchemy import Engine, func, select, text

from lifecycle.core.config import PROJECT_ROOT, load_settings
from lifecycle.devtools.orders import simulate_orders
from lifecycle.reporting.queries import SIMULATED_ORDER_IDS
from lifecycle.reporting.report import build_report
from lifecycle.store import schema

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)


def test_simulated_orders_follow_the_emails_with_an_uplift(engine: Engine) -> None:
    fill_campaign_results(engine, NOW, customers=2_000)
    added = simulate_orders(engine, now=NOW)
    assert added.emailed > 0 and added.held_out > 0 and added.revenue > 0

    ledger, orders = schema.send_ledger, schema.orders
    with engine.connect() as conn:
        rows = pd.DataFrame(conn.execute(select(ledger)).mappings().all())
        simulated = pd.DataFrame(
            conn.execute(select(orders).where(orders.c.id >= SIMULATED_ORDER_IDS)).mappings().all()
        )
    assert len(simulated) == added.emailed + added.held_out
    by_row = rows.set_index("id")
    source = by_row.loc[simulated["id"] - SIMULATED_ORDER_IDS]
    assert (source["customer_id"].to_numpy() == simulated["customer_id"].to_numpy()).all()
    starts = pd.to_datetime(source["sent_at"].fillna(source["planned_at"]), utc=True)
    placed = pd.to_datetime(simulated["placed_at"], utc=True)
    assert (placed.to_numpy() > starts.to_numpy()).all()  # after the email
    assert (placed <= pd.Timestamp(NOW)).all()  # never in the future
    assert (placed.to_numpy() <= (starts + timedelta(days=7)).to_numpy()).all()

    # an emailed customer's order after a click on the email carries its UTM fields
    with engine.connect() as conn:
        clicks = pd.DataFrame(
            conn.execute(
                select(
                    schema.engagement_events.c.send_id, schema.engagement_events.c.occurred_at
                ).where(schema.engagement_events.c.event == "click")
            ).all(),
            columns=["send_id", "occurred_at"],
        )
    first_click = pd.to_datetime(clicks.groupby("send_id")["occurred_at"].min(), utc=True)
    row_ids = simulated["id"] - SIMULATED_ORDER_IDS
    clicked_before = (source["status"] == "sent").to_numpy() & (
        row_ids.map(first_click).to_numpy() < placed.to_numpy()
    )
    tagged = simulated["utm_campaign"].notna().to_numpy()
    assert 0 < tagged.sum() < added.emailed
    assert (tagged == clicked_before).all()
    assert (
        simulated["utm_campaign"][tagged].to_numpy() == source["campaign_id"][tagged].to_numpy()
    ).all()
    assert set(simulated["utm_medium"][tagged]) == {"email"}

    sent = (rows["status"] == "sent").sum()
    held = (rows["reason"] == "holdout").sum()
    assert added.emailed / sent > added.held_out / held  # the treatment effect

    again = simulate_orders(engine, now=NOW)
    assert (again.emailed, again.held_out) == (0, 0)

    report = build_report(engine, load_settings(), as_of=NOW)
    assert report.simulated_orders == len(simulated)
    assert report.total.conversions > 0
    assert report.total.attribution["last_click"] > 0
    assert report.total.attribution["send_window"] > 0
    assert report.total.uplift.difference is not None and report.total.uplift.difference > 0


def test_the_readme_statement_removes_the_simulated_orders_only(engine: Engine) -> None:
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    (statement,) = re.findall(r"`(DELETE FROM orders WHERE id >= \d+)`", readme)
    fill_campaign_results(engine, NOW, customers=500)
    with engine.connect() as conn:
        real = conn.execute(select(func.count()).select_from(schema.orders)).scalar_one()
    assert simulate_orders(engine, now=NOW).emailed > 0
    with engine.begin() as conn:
        conn.execute(text(statement))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.orders)).scalar_one() == real
