"""Order attribution: an order whose UTM fields name an email campaign goes to the last email of
that campaign its customer clicked before ordering; any other order (and one whose campaign the
customer never clicked) to the emails sent within the conversion window. The holdout uplift
keeps the window rule. A warehouse whose orders carry no UTM fields keeps working."""

from __future__ import annotations

import dataclasses
import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from source_rows import utc
from sqlalchemy import BigInteger, Column, Engine, MetaData, Numeric, String, Table, insert

from lifecycle import cli
from lifecycle.core.config import PROJECT_ROOT, Settings, load_settings
from lifecycle.reporting import export
from lifecycle.reporting.report import Report, build_report
from lifecycle.store import schema
from lifecycle.store.sqltypes import UtcDateTime
from lifecycle.web import dashboard

DAY0 = utc(2026, 11, 2, 10)
AS_OF = utc(2026, 11, 20)
# campaign runs: id -> (campaign, sent at)
RUNS = {1: ("promo", DAY0), 2: ("promo", DAY0 + timedelta(days=3)), 3: ("news", DAY0)}
# ledger rows: (send id, run id, customer, status, variant)
SENDS = [
    (11, 1, 1, "sent", "a"),  # clicked, then the customer orders through its link
    (12, 2, 1, "sent", "b"),  # sent later, still before the order: the window would take it
    (13, 3, 1, "sent", None),  # another campaign within the window
    (21, 1, 2, "sent", "a"),  # order without UTM fields
    (31, 1, 3, "sent", "a"),  # order names promo, but customer 3 never clicked a promo email
    (41, 1, 4, "skipped", None),  # holdout
]
# clicks: (send id, clicked at); send 12's click comes after the order
CLICKS = [(11, DAY0 + timedelta(hours=1)), (12, DAY0 + timedelta(days=5))]
ORDER_AT = DAY0 + timedelta(days=4)
# orders: (id, customer, amount, utm_medium, utm_campaign, utm_content)
ORDERS = [
    (1, 1, 40.0, "email", "promo", "b"),  # its utm_content disagrees with send 11's variant
    (2, 2, 10.0, None, None, None),
    (3, 3, 20.0, "email", "promo", "a"),
    (4, 4, 5.0, None, None, None),
]


def fill(engine: Engine) -> None:
    ledger = [
        {
            "id": send_id,
            "run_id": run_id,
            "campaign_id": RUNS[run_id][0],
            "occurrence_key": str(run_id),
            "customer_id": customer_id,
            "status": status,
            "reason": "holdout" if status == "skipped" else None,
            "template": "reengagement",
            "planned_at": RUNS[run_id][1],
            "sent_at": RUNS[run_id][1] if status == "sent" else None,
            "variant": variant,
        }
        for send_id, run_id, customer_id, status, variant in SENDS
    ]
    runs = [
        {
            "id": run_id,
            "campaign_id": campaign,
            "run_key": f"cli__{campaign}_{run_id}",
            "as_of": at,
            "dry_run": False,
            "status": "success",
            "started_at": at,
            "finished_at": at,
        }
        for run_id, (campaign, at) in RUNS.items()
    ]
    campaign_of = {send_id: RUNS[run_id][0] for send_id, run_id, *_ in SENDS}
    events = [
        {
            "natural_key": f"{send_id}-click",
            "event": "click",
            "occurred_at": at,
            "send_id": send_id,
            "campaign_id": campaign_of[send_id],
            "received_at": at,
        }
        for send_id, at in CLICKS
    ]
    orders = [
        {
            "id": order_id,
            "customer_id": customer_id,
            "placed_at": ORDER_AT,
            "amount": amount,
            "currency": "USD",
            "status": "placed",
            "utm_source": "lifecycle" if medium else None,
            "utm_medium": medium,
            "utm_campaign": campaign,
            "utm_content": content,
        }
        for order_id, customer_id, amount, medium, campaign, content in ORDERS
    ]
    with engine.begin() as conn:
        conn.execute(insert(schema.campaign_runs), runs)
        conn.execute(insert(schema.send_ledger), ledger)
        conn.execute(insert(schema.engagement_events), events)
        conn.execute(insert(schema.orders), orders)


def by_campaign(report: Report) -> dict[str, dict[str, Any]]:
    return {c.campaign_id: c.to_dict() for c in report.campaigns}


def test_an_order_goes_to_the_last_clicked_email_else_by_the_window(
    engine: Engine, tmp_path: Path
) -> None:
    fill(engine)
    settings = load_settings(home=tmp_path, warehouse_url=str(engine.url))
    report = build_report(engine, settings, as_of=AS_OF, conversion_days=7)
    runs = {r.run_id: r.performance for r in report.runs}
    # run 1: order 1 by the click on send 11; order 2 (no UTM) and order 3 (no promo click by
    # customer 3) by the window
    assert runs[1].conversions == 3 and runs[1].revenue == 70.0
    assert runs[1].attribution == {"last_click": 1, "send_window": 2}
    # send 12 was sent last and clicked only after the order; send 13 is another campaign
    assert runs[2].conversions == 0 and runs[3].conversions == 0
    assert runs[2].revenue == 0.0 and runs[3].revenue == 0.0
    # the holdout comparison keeps the window rule, on both sides
    assert (runs[1].uplift.sent_converted, runs[1].uplift.holdout_converted) == (3, 1)
    assert runs[2].uplift.sent_converted == 1 and runs[3].uplift.sent_converted == 1
    campaigns = by_campaign(report)
    assert campaigns["promo"]["attribution"] == {"last_click": 1, "send_window": 2}
    experiment = campaigns["promo"]["experiment"]
    assert experiment["attribution"] == {"last_click": 1, "send_window": 2}
    # the ledger's variant counts; the disagreeing utm_content is reported
    assert experiment["utm_content_mismatches"] == 1
    a, b = experiment["variants"]
    assert a["attribution"] == {"last_click": 1, "send_window": 2} and a["revenue"] == 70.0
    assert b["attribution"] == {"last_click": 0, "send_window": 0}
    assert campaigns["news"]["attribution"] == {"last_click": 0, "send_window": 0}
    assert "conversions by rule: last_click 1, send_window 2" in export.format_table(report)
    variants = export.variants_csv(report).splitlines()
    assert variants[0].endswith("conversions_last_click,conversions_send_window")
    assert variants[1].startswith("promo,a,") and variants[1].endswith(",1,2")
    runs_csv = export.runs_csv(report).splitlines()
    assert runs_csv[0].endswith("conversions_last_click,conversions_send_window")


def test_one_campaign_report_attributes_like_the_whole_report(
    engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    """Order 1 went to promo's click: a report of news alone does not take it by the window."""
    fill(engine)
    base = ["--warehouse", engine.url.render_as_string(hide_password=False), "report"]
    as_of = ["--as-of", AS_OF.isoformat()]
    assert cli.main([*base, "--campaign", "news", "--format", "json", *as_of]) == 0
    (news,) = json.loads(capsys.readouterr().out)["campaigns"]
    assert news["conversions"] == 0 and news["uplift"]["sent_converted"] == 1


def without_utm(engine: Engine, tmp_path: Path) -> Settings:
    """The orders in a table without UTM columns, read by a report_orders.sql without them."""
    table = Table(
        "shop_orders",
        MetaData(),
        Column("customer_id", BigInteger),
        Column("placed_at", UtcDateTime),
        Column("amount", Numeric(12, 2)),
        Column("currency", String(3)),
    )
    table.create(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(table),
            [
                {"customer_id": c, "placed_at": ORDER_AT, "amount": amount, "currency": "USD"}
                for _, c, amount, *_ in ORDERS
            ],
        )
    sql_dir = tmp_path / "sql"
    shutil.copytree(PROJECT_ROOT / "include" / "sql", sql_dir)
    (sql_dir / "report_orders.sql").write_text(
        "SELECT customer_id, placed_at, amount, currency FROM shop_orders\n", encoding="utf-8"
    )
    settings = load_settings(home=tmp_path, warehouse_url=str(engine.url))
    return dataclasses.replace(settings, sql_dir=sql_dir)


def test_a_warehouse_without_utm_fields_attributes_by_the_window(
    engine: Engine, tmp_path: Path
) -> None:
    fill(engine)
    settings = without_utm(engine, tmp_path)
    report = build_report(engine, settings, as_of=AS_OF, conversion_days=7)
    runs = {r.run_id: r.performance for r in report.runs}
    assert runs[1].attribution == {"last_click": 0, "send_window": 3}
    assert runs[2].attribution == {"last_click": 0, "send_window": 1}
    assert runs[3].attribution == {"last_click": 0, "send_window": 1}
    assert by_campaign(report)["promo"]["revenue"] == 110.0  # 70 in run 1, order 1 again in run 2


def test_the_dashboard_counts_the_conversions_per_rule(engine: Engine) -> None:
    fill(engine)
    settings = load_settings(warehouse_url=engine.url.render_as_string(hide_password=False))
    app = dashboard.create_app(settings, dependencies=[], clock=lambda: AS_OF)
    page = TestClient(app).get("/").text
    assert 'data-metric="promo.attribution.last_click">1</b>' in page
    assert 'data-metric="promo.attribution.send_window">2</b>' in page
