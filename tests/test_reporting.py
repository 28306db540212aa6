"""Reporting on a tiny hand-built warehouse whose every figure is derived by hand below."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import Engine, insert

from lifecycle.core.config import load_settings
from lifecycle.reporting import export
from lifecycle.reporting.performance import run_performance
from lifecycle.reporting.queries import LedgerCount, ReportError
from lifecycle.reporting.report import Report, build_report
from lifecycle.reporting.statistics import newcombe_interval
from lifecycle.store import schema
from lifecycle.store.states import LedgerStatus

AS_OF = datetime(2026, 3, 10, 12, tzinfo=UTC)


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


CUSTOMERS = {1: "2025-01-15", 2: "2025-01-20", 3: "2025-02-05", 4: "2025-02-10", 5: "2026-01-03"}
CUSTOMERS[6] = "2026-02-14"
ORDERS = [
    # (id, customer, placed_at, amount, status)
    (1, 1, "2025-04-01 10:00", 100, "delivered"),
    (2, 1, "2026-01-10 08:00", 50, "delivered"),  # 2 days after c1's email: a conversion
    (3, 1, "2026-03-05 10:00", 20, "placed"),
    (4, 2, "2025-02-10 10:00", 30, "delivered"),  # c2's only order: lapses in February 2026
    (5, 3, "2025-06-01 10:00", 40, "delivered"),
    (6, 3, "2025-07-01 10:00", 40, "returned"),  # returned: not revenue
    (7, 3, "2025-07-02 10:00", 40, "delivered"),
    (8, 3, "2026-03-20 10:00", 500, "delivered"),  # after as_of: ignored everywhere
    (9, 4, "2025-12-15 10:00", 99, "cancelled"),  # c4 never becomes a customer
    (10, 5, "2026-01-20 10:00", 25, "delivered"),  # 5 days after c5's holdout slot
    (11, 6, "2026-02-20 10:00", 60, "delivered"),
    (12, 6, "2026-02-25 10:00", 10, "delivered"),
    (13, 7, "2026-01-15 11:00", 15, "delivered"),  # 7 days + 1 hour after c7's email: too late
]


def fill(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(schema.customers),
            [
                {
                    "id": cid,
                    "email": f"c{cid}@example.com",
                    "signup_at": t(f"{signup} 12:00"),
                    "marketing_consent": True,
                }
                for cid, signup in CUSTOMERS.items()
            ],
        )
        conn.execute(
            insert(schema.orders),
            [
                {
                    "id": oid,
                    "customer_id": cid,
                    "placed_at": t(placed),
                    "amount": amount,
                    "currency": "USD",
                    "status": status,
                }
                for oid, cid, placed, amount, status in ORDERS
            ],
        )
        runs = [
            (1, "winback", "scheduled__2026-01-08", "2026-01-08 09:00", False),
            (2, "winback", "manual__dry", "2026-01-09 09:00", True),
            (4, "winback", "cli__2026-01-20T09:00:00", "2026-01-20 09:00", False),
            (3, "birthday", "scheduled__2026-02-19", "2026-02-19 09:00", False),
        ]
        conn.execute(
            insert(schema.campaign_runs),
            [
                {
                    "id": rid,
                    "campaign_id": cid,
                    "run_key": key,
                    "as_of": t(at),
                    "dry_run": dry,
                    "status": "success",
                    "started_at": t(at),
                }
                for rid, cid, key, at, dry in runs
            ],
        )
        sent = {"status": "sent", "sent_at": t("2026-01-08 10:00")}
        ledger = [
            (1, 1, "winback", 1, sent),
            (2, 1, "winback", 2, sent),
            (3, 1, "winback", 7, sent),
            (4, 1, "winback", 3, {"status": "skipped", "reason": "holdout"}),
            (
                5,
                1,
                "winback",
                5,
                {"status": "skipped", "reason": "holdout", "send_after": t("2026-01-15 09:00")},
            ),
            (6, 1, "winback", 6, {"status": "skipped", "reason": "no_consent"}),
            (7, 1, "winback", 4, {"status": "failed", "reason": "rejected"}),
            (8, 2, "winback", 6, sent),  # dry run: not reported
            (10, 1, "winback", 8, {"status": "unknown", "reason": "interrupted"}),
            (9, 3, "birthday", 6, {"status": "sent", "sent_at": t("2026-02-19 10:00")}),
        ]
        conn.execute(
            insert(schema.send_ledger),
            [
                {
                    "id": lid,
                    "run_id": rid,
                    "campaign_id": cid,
                    "occurrence_key": f"k{rid}",
                    "customer_id": customer,
                    "template": cid,
                    "planned_at": t("2026-01-08 09:00"),
                    "send_after": None,
                    "reason": None,
                    "sent_at": None,
                }
                | fields
                for lid, rid, cid, customer, fields in ledger
            ],
        )
        events = [
            ("delivered", 1, "2026-01-08 10:01", False),
            ("open", 1, "2026-01-08 12:00", False),
            ("open", 1, "2026-01-09 12:00", False),  # a second open of the same email
            ("click", 1, "2026-01-08 12:01", False),
            ("delivered", 2, "2026-01-08 10:01", True),
            ("spamreport", 2, "2026-01-08 18:00", True),
            ("unsubscribe", 2, "2026-04-01 10:00", False),  # after as_of
            ("bounce", 3, "2026-01-08 10:00", False),
            ("dropped", 3, "2026-01-08 10:00", False),  # same send: still one bounced send
            ("processed", 9, "2026-02-19 10:00", False),  # not a funnel step
            ("open", None, "2026-01-08 11:00", False),  # unlinked: not counted
        ]
        conn.execute(
            insert(schema.engagement_events),
            [
                {
                    "sg_event_id": f"sg{i}",
                    "natural_key": f"nk{i}",
                    "event": event,
                    "occurred_at": t(at),
                    "send_id": send_id,
                    "campaign_id": "winback",
                    "simulated": simulated,
                    "received_at": t(at),
                }
                for i, (event, send_id, at, simulated) in enumerate(events)
            ],
        )


@pytest.fixture
def report(engine: Engine) -> Report:
    fill(engine)
    return build_report(engine, load_settings(), as_of=AS_OF, months=2)


def test_funnel_counts_distinct_sends_per_step_and_skips_dry_runs(report: Report) -> None:
    assert [r.run_id for r in report.runs] == [3, 4, 1]
    winback = next(r for r in report.runs if r.run_id == 1).performance
    assert winback.funnel == {
        "audience": 8,
        "skipped": 3,
        "planned": 5,
        "waiting": 0,
        "sent": 3,
        "failed": 1,
        "unknown": 1,
        "delivered": 2,
        "opened": 1,
        "clicked": 1,
        "bounced": 1,
        "unsubscribed": 0,
        "spam_reports": 1,
    }
    assert winback.skipped == {"holdout": 2, "no_consent": 1}
    assert report.simulated_events == 2


def test_conversions_revenue_and_holdout_uplift(report: Report) -> None:
    winback = next(c for c in report.campaigns if c.campaign_id == "winback").performance
    # c1 bought 2 days after the email (50); c7 bought 7 days and an hour after: too late.
    assert (winback.conversions, winback.revenue) == (1, 50.0)
    # Holdout: c3 never bought; c5 bought 5 days after its slot (send_after), not after planning.
    uplift = winback.uplift
    assert (uplift.sent, uplift.sent_converted, uplift.holdout, uplift.holdout_converted) == (
        3,
        1,
        2,
        1,
    )
    assert uplift.difference == pytest.approx(1 / 3 - 1 / 2)
    low, high = uplift.interval
    assert low < uplift.difference < high
    assert not uplift.significant

    birthday = next(c for c in report.campaigns if c.campaign_id == "birthday").performance
    assert (birthday.conversions, birthday.revenue) == (1, 70.0)
    assert birthday.uplift.holdout == 0 and birthday.uplift.interval is None


def test_runs_link_to_their_dag_runs(report: Report) -> None:
    links = {r.run_id: r.dag_run_url for r in report.runs}
    assert links == {
        1: "/dags/campaign_winback/runs/scheduled__2026-01-08",
        3: "/dags/campaign_birthday/runs/scheduled__2026-02-19",
        4: None,  # `lifecycle run`: not an Airflow run
    }


def test_monthly_retention_kpis(report: Report) -> None:
    january, february = report.months
    # January 2026. Active (an order in the 365 days before) on Jan 1: c1, c2, c3. On Feb 1:
    # c1, c2, c3 plus c5 and c7, both new (first order in January).
    assert january.month == date(2026, 1, 1)
    assert (january.active_start, january.active_end, january.new_customers) == (3, 5, 2)
    assert january.crr == pytest.approx((5 - 2) / 3 * 100)
    assert january.churned == 0
    # Buyers by Feb 1: c1, c2, c3, c5, c7; repeat buyers c1 and c3 (c3's return does not count).
    assert january.repeat_purchase_rate == pytest.approx(2 / 5 * 100)
    assert january.revenue == 50 + 25 + 15
    # February: c2's last order (2025-02-10) leaves the window; c6 is new.
    assert (february.active_start, february.active_end, february.new_customers) == (5, 5, 1)
    assert february.crr == pytest.approx((5 - 1) / 5 * 100)
    assert february.churn_rate == pytest.approx(1 / 5 * 100)
    assert february.repeat_purchase_rate == pytest.approx(3 / 6 * 100)
    assert february.revenue == 70


def test_lifetime_value_by_signup_cohort(report: Report) -> None:
    cohorts = {c.cohort: (c.customers, c.buyers, c.revenue) for c in report.cohorts}
    assert cohorts == {
        date(2025, 1, 1): (2, 2, 100 + 50 + 20 + 30),
        date(2025, 2, 1): (2, 1, 40 + 40),  # c3's returned and future orders, c4's cancellation
        date(2026, 1, 1): (1, 1, 25),
        date(2026, 2, 1): (1, 1, 70),
    }
    assert report.cohorts[0].average_ltv == pytest.approx(200 / 2)


def test_one_campaign_and_csv_exports(engine: Engine) -> None:
    fill(engine)
    report = build_report(engine, load_settings(), as_of=AS_OF, campaign_id="birthday", months=1)
    assert [c.campaign_id for c in report.campaigns] == ["birthday"]
    rows = list(csv.DictReader(io.StringIO(export.runs_csv(report))))
    assert [(r["run_id"], r["sent"], r["conversions"], r["revenue"]) for r in rows] == [
        ("3", "1", "1", "70.00")
    ]
    months = list(csv.DictReader(io.StringIO(export.retention_csv(report))))
    assert [m["month"] for m in months] == ["2026-02-01"]
    assert "birthday" in export.format_table(report)


def test_empty_warehouse_gives_an_empty_report(engine: Engine) -> None:
    report = build_report(engine, load_settings(), as_of=AS_OF, months=1)
    assert report.runs == [] and report.campaigns == [] and report.cohorts == []
    assert report.months[0].crr is None
    assert report.total.funnel["sent"] == 0


def test_naive_as_of_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build_report(engine, load_settings(), as_of=datetime(2026, 3, 1))


@pytest.mark.parametrize(
    ("k1", "n1", "k2", "n2", "expected"),
    [
        # Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10.
        (56, 70, 48, 80, (0.0524, 0.3339)),
        (9, 10, 3, 10, (0.1705, 0.8090)),
        (5, 56, 0, 29, (-0.0381, 0.1926)),
    ],
)
def test_newcombe_interval_matches_published_values(k1, n1, k2, n2, expected) -> None:  # type: ignore[no-untyped-def]
    low, high = newcombe_interval(k1, n1, k2, n2)
    assert low == pytest.approx(expected[0], abs=5e-4)
    assert high == pytest.approx(expected[1], abs=5e-4)


def test_daily_activity_counts_sends_and_distinct_engaged_sends(engine: Engine) -> None:
    fill(engine)
    as_of = t("2026-01-09 23:00")
    report = build_report(engine, load_settings(), as_of=as_of, months=1, days=3)
    # Jan 8: three winback emails sent (the dry run's does not count); c1's email opened twice
    # (once that day, once the next) and clicked once.
    assert [(d.day, d.sent, d.opened, d.clicked) for d in report.days] == [
        (date(2026, 1, 7), 0, 0, 0),
        (date(2026, 1, 8), 3, 1, 1),
        (date(2026, 1, 9), 0, 1, 0),
    ]


def test_cli_report_formats(
    engine: Engine, warehouse_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from lifecycle import cli

    fill(engine)
    base = ["--warehouse", warehouse_url, "report", "--as-of", AS_OF.isoformat()]
    assert cli.main([*base, "--format", "json", "--months", "2"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["total"]["funnel"]["sent"] == 3 + 1
    assert [m["month"] for m in body["months"]] == ["2026-01-01", "2026-02-01"]
    assert cli.main([*base, "--campaign", "winback", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["run_id"], r["skipped_holdout"], r["conversions"]) for r in rows] == [
        ("4", "0", "0"),  # a run with an empty audience
        ("1", "2", "1"),
    ]
    assert cli.main(base) == 0
    assert "SIMULATED" in capsys.readouterr().out


def test_orders_in_several_currencies_are_refused(engine: Engine) -> None:
    fill(engine)
    order = {"id": 99, "customer_id": 1, "placed_at": t("2026-01-02 10:00"), "amount": 10}
    with engine.begin() as conn:
        conn.execute(insert(schema.orders), [order | {"currency": "EUR", "status": "delivered"}])
    with pytest.raises(ReportError, match=r"EUR, USD.*report_orders\.sql"):
        build_report(engine, load_settings(), as_of=AS_OF)


def test_planned_rows_are_the_emails_waiting_for_the_send_window() -> None:
    ledger = [
        LedgerCount(1, LedgerStatus.PLANNED, None, 4),
        LedgerCount(1, LedgerStatus.SENT, None, 6),
        LedgerCount(1, LedgerStatus.SKIPPED, "holdout", 2),
    ]
    funnel = run_performance([1], ledger, [], {})[1].funnel
    assert (funnel["planned"], funnel["waiting"], funnel["sent"]) == (10, 4, 6)
