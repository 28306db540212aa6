"""NPS, response rate and score distribution per campaign and month, checked against figures
computed by hand, in the report, its CSV and text, the CLI and the dashboard, on both warehouses."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert

from lifecycle.core.config import load_settings
from lifecycle.reporting import export
from lifecycle.reporting.report import build_report
from lifecycle.reporting.surveys import SurveyMonth, nps_interval
from lifecycle.store.schema import send_ledger, survey_responses
from lifecycle.web import dashboard

AS_OF = datetime(2026, 12, 20, 12, tzinfo=UTC)
NOVEMBER = datetime(2026, 11, 10, 9, tzinfo=UTC)
DECEMBER = datetime(2026, 12, 2, 9, tzinfo=UTC)


def add_sent(
    engine: Engine,
    customer_id: int,
    sent_at: datetime,
    score: int | None = None,
    *,
    campaign: str = "feedback",
    status: str = "sent",
    answered_at: datetime | None = None,
) -> None:
    with engine.begin() as conn:
        send_id = conn.execute(
            insert(send_ledger)
            .values(
                campaign_id=campaign,
                occurrence_key=str(customer_id),
                customer_id=customer_id,
                run_id=1,
                status=status,
                template=campaign,
                email=f"c{customer_id}@example.com",
                planned_at=sent_at,
                sent_at=sent_at if status == "sent" else None,
            )
            .returning(send_ledger.c.id)
        ).scalar_one()
        if score is not None:
            at = answered_at or sent_at + timedelta(days=1)
            conn.execute(
                insert(survey_responses).values(
                    send_id=send_id,
                    campaign_id=campaign,
                    occurrence_key=str(customer_id),
                    customer_id=customer_id,
                    score=score,
                    answered_at=at,
                    updated_at=at,
                )
            )


@pytest.fixture
def filled(engine: Engine) -> Engine:
    """November: 10 emails, 6 answers 10 9 9 8 6 0. December: 2 emails, 1 answer 3 and one
    given after as_of. Birthday emails (never surveyed) count nowhere."""
    for customer_id, score in enumerate([10, 9, 9, 8, 6, 0, None, None, None, None], start=1):
        add_sent(engine, customer_id, NOVEMBER, score)
    add_sent(engine, 11, DECEMBER, 3)
    add_sent(engine, 12, DECEMBER, 10, answered_at=AS_OF + timedelta(hours=1))
    add_sent(engine, 13, NOVEMBER, campaign="birthday")
    return engine


def test_adjusted_wald_interval_by_hand() -> None:
    # n' = 9, p' = 3.75/9, d' = 2.75/9: centre 0.1111, se = sqrt(0.709877/9) = 0.280847
    low, high = nps_interval(promoters=3, detractors=2, n=6)
    assert low == pytest.approx(-43.934, abs=0.01)
    assert high == pytest.approx(66.156, abs=0.01)
    assert nps_interval(promoters=0, detractors=5, n=5)[0] == -100.0  # clipped
    assert nps_interval(promoters=500, detractors=0, n=500)[1] == 100.0


def test_nps_per_campaign_and_month_by_hand(filled: Engine, warehouse_url: str) -> None:
    report = build_report(filled, load_settings(warehouse_url=warehouse_url), as_of=AS_OF)
    november, december = report.surveys

    assert (november.campaign_id, november.month.isoformat()) == ("feedback", "2026-11-01")
    assert (november.sent, november.responses) == (10, 6)
    assert (november.promoters, november.passives, november.detractors) == (3, 1, 2)
    assert november.nps == pytest.approx(100 / 6)  # (3 - 2) / 6
    assert november.distribution == (1, 0, 0, 0, 0, 0, 1, 0, 1, 2, 1)
    assert november.response_rate == pytest.approx(0.6)
    low, high = november.response_rate_interval or (0, 0)
    assert (low, high) == (pytest.approx(0.31267, abs=1e-4), pytest.approx(0.83182, abs=1e-4))
    assert november.nps_interval == (
        pytest.approx(-43.934, abs=0.01),
        pytest.approx(66.156, abs=0.01),
    )

    assert (december.month.isoformat(), december.sent, december.responses) == ("2026-12-01", 2, 1)
    assert december.nps == -100.0  # the answer after as_of does not count yet

    assert report.to_dict()["surveys"][0]["nps"] == pytest.approx(100 / 6)
    assert (
        build_report(
            filled, load_settings(warehouse_url=warehouse_url), as_of=AS_OF, campaign_id="birthday"
        ).surveys
        == []
    )


def test_an_answered_email_counts_as_sent_whatever_the_ledger_says(
    engine: Engine, warehouse_url: str
) -> None:
    add_sent(engine, 1, NOVEMBER, 9)
    add_sent(engine, 2, NOVEMBER, 2, status="unknown")
    add_sent(engine, 3, NOVEMBER, status="unknown")  # never answered: may not have arrived
    (month,) = build_report(engine, load_settings(warehouse_url=warehouse_url), as_of=AS_OF).surveys
    assert (month.sent, month.responses, month.nps) == (2, 2, 0.0)


def test_csv_and_text(filled: Engine, warehouse_url: str) -> None:
    report = build_report(filled, load_settings(warehouse_url=warehouse_url), as_of=AS_OF)
    rows = list(csv.DictReader(io.StringIO(export.surveys_csv(report))))
    assert [(r["month"], r["sent"], r["responses"]) for r in rows] == [
        ("2026-11-01", "10", "6"),
        ("2026-12-01", "2", "1"),
    ]
    assert float(rows[0]["nps"]) == pytest.approx(16.666667)
    assert [int(rows[0][f"score_{s}"]) for s in range(11)] == [1, 0, 0, 0, 0, 0, 1, 0, 1, 2, 1]
    text = export.format_table(report)
    assert re.search(r"feedback\s+2026-11\s+10\s+6\s+60\.0\s+\+17\s+\[-44, \+66\]", text), text


def test_dashboard_shows_nps(filled: Engine, warehouse_url: str) -> None:
    app = dashboard.create_app(
        load_settings(warehouse_url=warehouse_url), dependencies=[], clock=lambda: AS_OF
    )
    client = TestClient(app)
    html = client.get("/").text
    metrics: dict[str, Any] = dict(re.findall(r'data-metric="(survey\.[^"]+)">([^<]*)<', html))
    assert metrics["survey.feedback.2026-11.nps"] == "+17"
    assert metrics["survey.feedback.2026-11.response_rate"] == "60.0%"
    assert metrics["survey.feedback.2026-12.nps"] == "-100"
    assert 'data-counts="1,0,0,0,0,0,1,0,1,2,1"' in html
    exported = client.get("/export/surveys.csv")
    assert exported.status_code == 200 and exported.text.startswith("campaign_id,month,sent,")


def test_no_answers_no_nps() -> None:
    empty = SurveyMonth("feedback", NOVEMBER.date(), sent=5, distribution=(0,) * 11)
    assert empty.nps is None and empty.nps_interval is None and empty.response_rate == 0.0


def test_cli_prints_the_surveys_table(
    filled: Engine, warehouse_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from lifecycle import cli

    base = ["--warehouse", warehouse_url, "report", "--as-of", AS_OF.isoformat()]
    assert cli.main([*base, "--format", "csv", "--table", "surveys"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["campaign_id"], r["month"], r["responses"]) for r in rows] == [
        ("feedback", "2026-11-01", "6"),
        ("feedback", "2026-12-01", "1"),
    ]
    assert cli.main(base) == 0
    assert "NPS 95% CI" in capsys.readouterr().out
