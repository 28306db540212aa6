"""Reports split by variant: funnel, conversion and revenue with intervals, the difference
between variants and the winner, in the report, its JSON, CSV and table, and the CLI."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from source_rows import utc
from sqlalchemy import Engine, insert

from lifecycle import cli
from lifecycle.core.config import load_settings
from lifecycle.reporting import export
from lifecycle.reporting.report import build_report
from lifecycle.reporting.statistics import newcombe_interval, pick_winner, wilson_interval
from lifecycle.store import schema
from lifecycle.web import dashboard

SENT_AT = utc(2026, 11, 2, 10)
AS_OF = utc(2026, 11, 20)
# variant: (first customer id, sent, converted, order amount, opened, clicked)
ARMS = {"a": (1, 100, 10, 50.0, 40, 5), "b": (101, 100, 30, 20.0, 60, 15)}


def fill(engine: Engine) -> None:
    rows: list[dict[str, Any]] = []
    orders: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for variant, (first, sent, converted, amount, opened, clicked) in ARMS.items():
        for n, customer_id in enumerate(range(first, first + sent)):
            send_id = customer_id
            rows.append(ledger_row(send_id, customer_id, "sent", variant))
            if n < converted:
                orders.append(order(customer_id, SENT_AT + timedelta(days=2), amount))
            if n < opened:
                events.append(event(send_id, "open", n))
            if n < clicked:
                events += [event(send_id, "click", n), event(send_id, "click", n + 1000)]
    # an order after the window converts nobody; the holdout has no variant
    orders.append(order(1 + 50, SENT_AT + timedelta(days=9), 999.0))
    for customer_id in range(201, 221):
        rows.append(ledger_row(customer_id, customer_id, "skipped", None, reason="holdout"))
    customers = [
        {"id": i, "signup_at": utc(2025, 1, 1), "marketing_consent": True} for i in range(1, 221)
    ]
    with engine.begin() as conn:
        conn.execute(insert(schema.customers), customers)
        conn.execute(insert(schema.campaign_runs), [run_row()])
        conn.execute(insert(schema.send_ledger), rows)
        conn.execute(insert(schema.orders), orders)
        conn.execute(insert(schema.engagement_events), events)


def run_row() -> dict[str, Any]:
    return {
        "id": 1,
        "campaign_id": "promo",
        "run_key": "cli__promo",
        "as_of": SENT_AT,
        "dry_run": False,
        "status": "success",
        "started_at": SENT_AT,
        "finished_at": SENT_AT,
    }


def ledger_row(
    send_id: int, customer_id: int, status: str, variant: str | None, reason: str | None = None
) -> dict[str, Any]:
    return {
        "id": send_id,
        "run_id": 1,
        "campaign_id": "promo",
        "occurrence_key": "1",
        "customer_id": customer_id,
        "status": status,
        "reason": reason,
        "template": "reengagement",
        "planned_at": SENT_AT,
        "sent_at": SENT_AT if status == "sent" else None,
        "variant": variant,
    }


def order(customer_id: int, placed_at: Any, amount: float) -> dict[str, Any]:
    return {
        "id": customer_id * 10 + placed_at.day,
        "customer_id": customer_id,
        "placed_at": placed_at,
        "amount": amount,
        "currency": "USD",
        "status": "placed",
    }


def event(send_id: int, kind: str, n: int) -> dict[str, Any]:
    return {
        "natural_key": f"{send_id}-{kind}-{n}",
        "event": kind,
        "occurred_at": SENT_AT + timedelta(hours=1),
        "send_id": send_id,
        "campaign_id": "promo",
        "received_at": SENT_AT + timedelta(hours=1),
    }


def test_the_report_splits_a_campaign_by_variant(engine: Engine, tmp_path: Path) -> None:
    fill(engine)
    settings = load_settings(home=tmp_path, warehouse_url=str(engine.url))
    report = build_report(engine, settings, as_of=AS_OF, conversion_days=7)
    (campaign,) = report.campaigns
    test = campaign.experiment
    assert test is not None
    data = test.to_dict()
    for figures, (variant, arm) in zip(data["variants"], ARMS.items(), strict=True):
        _, sent, converted, amount, opened, clicked = arm
        assert figures["variant"] == variant and figures["sent"] == sent
        assert figures["opened"]["count"] == opened and figures["clicked"]["count"] == clicked
        assert figures["converted"]["count"] == converted
        low, high = wilson_interval(converted, sent)
        assert (figures["converted"]["ci_low"], figures["converted"]["ci_high"]) == (low, high)
        assert figures["revenue"] == converted * amount
        assert figures["revenue_per_send_ci_low"] < converted * amount / sent
        assert figures["revenue_per_send_ci_high"] > converted * amount / sent
    (difference,) = data["differences"]
    low, high = newcombe_interval(30, 100, 10, 100)
    assert difference == {
        "variant": "b",
        "baseline": "a",
        "difference": pytest.approx(0.2),
        "ci_low": low,
        "ci_high": high,
        "significant": True,
    }
    assert data["winner"] == "b" and "significant" in data["winner_reason"]
    # opens 40% vs 60% is significant too; clicks 5% vs 15% as well
    assert {m: w["winner"] for m, w in data["winners"].items()} == {
        "unique_opens": "b",
        "clicks": "b",
        "conversions": "b",
    }
    assert data["attribution"] == {"last_click": 0, "send_window": 40}
    # the campaign's totals still count every send, with or without a variant
    assert campaign.performance.funnel["sent"] == 200
    assert campaign.performance.uplift.holdout == 20

    rows = list(csv.DictReader(io.StringIO(export.variants_csv(report))))
    assert [(r["variant"], r["sent"], r["conversions"], r["winner_conversions"]) for r in rows] == [
        ("a", "100", "10", ""),
        ("b", "100", "30", "yes"),
    ]
    assert rows[1]["difference_vs"] == "a" and float(rows[1]["difference"]) == pytest.approx(0.2)
    table = export.format_table(report)
    assert "variant b" in table and "winner on conversions: b" in table


def test_lifecycle_report_json_carries_the_variants(
    engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(engine)
    base = ["--warehouse", engine.url.render_as_string(hide_password=False), "report"]
    as_of = ["--as-of", AS_OF.isoformat()]
    assert cli.main([*base, "--campaign", "promo", "--format", "json", *as_of]) == 0
    (campaign,) = json.loads(capsys.readouterr().out)["campaigns"]
    assert campaign["experiment"]["winner"] == "b"
    assert [v["variant"] for v in campaign["experiment"]["variants"]] == ["a", "b"]
    args = [*base, "--format", "csv", "--table", "variants", *as_of]
    assert cli.main(args) == 0
    assert capsys.readouterr().out.startswith(",".join(export.VARIANT_COLUMNS))


@pytest.mark.parametrize(
    ("counts", "winner", "reason"),
    [
        ({"a": (10, 100), "b": (30, 100)}, "b", "significant at 0.05"),
        ({"a": (10, 100), "b": (14, 100)}, None, "not significant at 0.05"),
        ({"a": (20, 100), "b": (20, 100)}, None, "tie"),
        ({"a": (10, 100), "b": (30, 100), "c": (28, 100)}, None, "b leads c"),
        ({"a": (10, 100), "b": (0, 0)}, None, "fewer than two"),
    ],
)
def test_a_winner_is_named_only_when_significant(
    counts: dict[str, tuple[int, int]], winner: str | None, reason: str
) -> None:
    verdict = pick_winner(counts, 0.05)
    assert verdict.winner == winner and reason in verdict.reason, verdict


def test_a_stricter_level_withholds_a_borderline_winner() -> None:
    counts = {"a": (10, 100), "b": (21, 100)}
    assert pick_winner(counts, 0.05).winner == "b"
    assert pick_winner(counts, 0.001).winner is None


def test_the_dashboard_shows_each_variant_and_the_winner(engine: Engine) -> None:
    fill(engine)
    settings = load_settings(warehouse_url=engine.url.render_as_string(hide_password=False))
    app = dashboard.create_app(settings, dependencies=[], clock=lambda: AS_OF)
    client = TestClient(app)
    page = client.get("/").text
    assert 'data-metric="promo.winner.conversions">b</b>' in page
    assert 'data-metric="promo.winner.unique_opens">b</b>' in page
    assert 'data-metric="promo.a.conversion">10.0%' in page
    assert 'data-metric="promo.b.conversion">30.0%' in page
    exported = client.get("/export/variants.csv").text
    assert exported.splitlines()[0] == ",".join(export.VARIANT_COLUMNS)
    assert len(exported.splitlines()) == 3
