"""The dashboard app over HTTP: the figures it shows match the warehouse, exports, auth."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta

import pytest
from campaign_results import CAMPAIGNS, expected_figures, fill_campaign_results
from fastapi.testclient import TestClient
from sqlalchemy import Engine, delete, func, insert, select, update

from lifecycle.core.config import load_settings
from lifecycle.store import schema
from lifecycle.web import dashboard

AS_OF = datetime(2026, 11, 24, 9, tzinfo=UTC)


def shown(html: str) -> dict[str, str]:
    return dict(re.findall(r'data-metric="([^"]+)">([^<]*)<', html))


@pytest.fixture
def client(engine: Engine, warehouse_url: str) -> TestClient:
    fill_campaign_results(engine, AS_OF, customers=1_500)
    app = dashboard.create_app(
        load_settings(warehouse_url=warehouse_url), dependencies=[], clock=lambda: AS_OF
    )
    return TestClient(app)


def test_page_shows_the_warehouse_figures(client: TestClient, engine: Engine) -> None:
    response = client.get("/")
    assert response.status_code == 200
    metrics = shown(response.text)
    expected = expected_figures(engine)
    for key, value in expected.items():
        assert metrics[key] == f"{value:,}", key
    assert set(CAMPAIGNS) <= {m.split(".")[0] for m in metrics}
    with engine.connect() as conn:
        simulated = conn.execute(
            select(func.count()).where(schema.engagement_events.c.simulated)
        ).scalar_one()
    assert metrics["simulated_events"] == f"{simulated:,}"
    assert 'href="/dags/campaign_onboarding/runs/scheduled__' in response.text
    assert 'target="_top"' in response.text
    assert response.text.count("<svg") >= 5


def test_one_campaign(client: TestClient, engine: Engine) -> None:
    metrics = shown(client.get("/", params={"campaign": "birthday"}).text)
    assert metrics["sent"] == f"{expected_figures(engine)['birthday.sent']:,}"
    assert not any(key.startswith("onboarding.") for key in metrics)
    html = client.get("/", params={"campaign": "birthday"}).text
    assert all(f'<option value="{c}"' in html for c in CAMPAIGNS)  # the filter lists them all
    assert client.get("/", params={"campaign": "Robert'); DROP"}).status_code == 422
    assert client.get("/", params={"days": 0}).status_code == 422


def test_without_simulated_events_there_is_no_demo_notice(
    client: TestClient, engine: Engine
) -> None:
    with engine.begin() as conn:
        conn.execute(delete(schema.engagement_events))
    html = client.get("/").text
    assert 'data-testid="simulated"' not in html
    assert shown(html)["opened"] == "0"


def test_csv_exports(client: TestClient, engine: Engine) -> None:
    response = client.get("/export/runs.csv")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    expected = expected_figures(engine)
    assert len(rows) == 2 * len(CAMPAIGNS)  # the dry run is not reported
    assert sum(int(r["sent"]) for r in rows) == expected["sent"]
    assert sum(int(r["opened"]) for r in rows) == expected["opened"]
    months = list(csv.DictReader(io.StringIO(client.get("/export/retention.csv").text)))
    assert len(months) == 12 and months[-1]["month"] == "2026-10-01"
    assert client.get("/export/cohorts.csv").text.startswith("signup_month,")
    assert client.get("/export/passwords.csv").status_code == 404


def test_report_json(client: TestClient, engine: Engine) -> None:
    body = client.get("/report.json").json()
    assert body["total"]["funnel"]["sent"] == expected_figures(engine)["sent"]
    assert body["as_of"] == AS_OF.isoformat()


def test_login_is_required_by_default() -> None:
    """As the Airflow plugin mounts it."""
    from lifecycle.airflow.plugin import dashboard_app  # imports Airflow: only in this test

    client = TestClient(dashboard_app())
    assert client.get("/").status_code == 401
    assert client.get("/export/runs.csv").status_code == 401


def test_a_report_that_cannot_be_computed_says_why(client: TestClient, engine: Engine) -> None:
    order = {"id": 10**9, "customer_id": 1, "placed_at": AS_OF, "amount": 5, "status": "placed"}
    with engine.begin() as conn:
        conn.execute(insert(schema.orders), [order | {"currency": "AMD"}])
    response = client.get("/")
    assert response.status_code == 500
    assert "several currencies (AMD, USD)" in response.text


def test_once_unknown_sends_are_shown_by_state(
    engine: Engine, warehouse_url: str, client: TestClient
) -> None:
    ledger = schema.send_ledger
    with engine.begin() as conn:
        ids = (
            conn.execute(
                select(ledger.c.id)
                .where(ledger.c.campaign_id == "onboarding", ledger.c.status == "sent")
                .order_by(ledger.c.id)
                .limit(3)
            )
            .scalars()
            .all()
        )
        changes = [
            {"status": "unknown", "claimed_at": AS_OF - timedelta(hours=30)},  # requeue-able
            {"status": "unknown", "claimed_at": AS_OF - timedelta(hours=1)},  # awaiting events
            {"resolved_event_id": 1, "resolved_by": "delivered", "resolved_at": AS_OF},
        ]
        for send_id, values in zip(ids, changes, strict=True):
            conn.execute(update(ledger).where(ledger.c.id == send_id).values(**values))
    settings = load_settings(warehouse_url=warehouse_url, sendgrid_webhook_public_key="key")
    app = dashboard.create_app(settings, dependencies=[], clock=lambda: AS_OF)
    metrics = shown(TestClient(app).get("/").text)
    assert metrics["onboarding.unknown.resolved"] == "1"
    assert metrics["onboarding.unknown.awaiting_events"] == "1"
    assert metrics["onboarding.unknown.requeueable"] == "1"
    assert not any(key.startswith("birthday.unknown.") for key in metrics)  # none there
