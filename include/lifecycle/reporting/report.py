"""The report: what the campaigns did for retention, as of an explicit instant.

`build_report` reads the warehouse on one connection (`queries`) and puts together, per run
and per campaign, the funnel, conversions and uplift against the holdout (`performance`,
`statistics`), monthly retention KPIs and lifetime value by signup cohort (`kpis`), and the
emails sent, opened and clicked per UTC day. Dry runs are left out: they send nothing.
Revenue adds up order amounts as stored: orders in several currencies are refused
(`queries.ReportError`). `export` turns a report into CSV and text.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from urllib.parse import quote

import pandas as pd
from sqlalchemy import Connection, Engine

from lifecycle.core.config import Settings
from lifecycle.reporting import queries
from lifecycle.reporting.kpis import CohortValue, MonthKpis, cohort_values, monthly_kpis
from lifecycle.reporting.performance import (
    Performance,
    conversions_by_run,
    run_performance,
    with_conversions,
)
from lifecycle.reporting.surveys import SurveyMonth, survey_months
from lifecycle.reporting.variants import Experiment, experiments
from lifecycle.store import unknown
from lifecycle.store.states import RunStatus
from lifecycle.store.unknown import UnknownStates

CLI_RUN_PREFIX = "cli__"  # run keys of real runs that `lifecycle run` makes


@dataclass
class RunReport:
    run_id: int
    campaign_id: str
    run_key: str
    as_of: datetime
    started_at: datetime
    status: RunStatus
    dag_run_url: str | None  # the Airflow UI path; None: the run came from `lifecycle run`
    performance: Performance

    def to_dict(self) -> dict[str, object]:
        return {
            "run_id": self.run_id,
            "campaign_id": self.campaign_id,
            "run_key": self.run_key,
            "as_of": self.as_of.isoformat(),
            "started_at": self.started_at.isoformat(),
            "status": self.status,
            "dag_run_url": self.dag_run_url,
            **self.performance.to_dict(),
        }


@dataclass
class CampaignReport:
    campaign_id: str
    runs: int
    last_run_at: datetime | None
    performance: Performance
    experiment: Experiment | None = None  # A/B/n results, when the campaign has variants
    # sends once `unknown`: resolved from SendGrid's events, awaiting them, requeue-able
    unknown: UnknownStates = field(default_factory=lambda: UnknownStates(0, 0, 0))

    def to_dict(self) -> dict[str, object]:
        return {
            "campaign_id": self.campaign_id,
            "runs": self.runs,
            "last_run_at": self.last_run_at.isoformat() if self.last_run_at else None,
            **self.performance.to_dict(),
            "experiment": self.experiment.to_dict() if self.experiment else None,
            "unknown_states": self.unknown.to_dict(),
        }


@dataclass(frozen=True)
class DayActivity:
    day: date  # UTC
    sent: int
    opened: int  # distinct sends with an open that day
    clicked: int

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "day": self.day.isoformat()}


@dataclass
class Report:
    as_of: datetime
    conversion_days: int
    active_days: int
    campaigns: list[CampaignReport]
    runs: list[RunReport]  # newest first
    months: list[MonthKpis]  # oldest first
    cohorts: list[CohortValue]  # oldest first
    days: list[DayActivity]  # the last `days` UTC days, oldest first
    simulated_events: int  # engagement events generated for the demo, not real
    currency: str | None  # of every amount (None without orders)
    surveys: list[SurveyMonth]  # NPS per surveyed campaign and month of sending, oldest first
    simulated_orders: int = 0  # orders the demo simulated after its emails, not real

    @property
    def total(self) -> Performance:
        total = Performance()
        for campaign in self.campaigns:
            total.add(campaign.performance)
        return total

    def to_dict(self) -> dict[str, object]:
        return {
            "as_of": self.as_of.isoformat(),
            "conversion_days": self.conversion_days,
            "active_days": self.active_days,
            "simulated_events": self.simulated_events,
            "simulated_orders": self.simulated_orders,
            "currency": self.currency,
            "total": self.total.to_dict(),
            "campaigns": [c.to_dict() for c in self.campaigns],
            "runs": [r.to_dict() for r in self.runs],
            "months": [m.to_dict() for m in self.months],
            "cohorts": [c.to_dict() for c in self.cohorts],
            "days": [d.to_dict() for d in self.days],
            "surveys": [s.to_dict() for s in self.surveys],
        }


def build_report(
    engine: Engine,
    settings: Settings,
    *,
    as_of: datetime,
    campaign_id: str | None = None,
    conversion_days: int = 7,
    months: int = 12,
    active_days: int = 365,
    days: int = 30,
) -> Report:
    """The whole report as of `as_of` (optionally for one campaign's runs)."""
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    if min(conversion_days, months, active_days, days) < 1:
        raise ValueError("conversion_days, months, active_days and days must be at least 1")
    as_of = as_of.astimezone(UTC)
    with engine.connect() as conn:
        runs = queries.real_runs(conn, campaign_id, as_of)
        orders = queries.orders(conn, settings, as_of)
        run_ids = [run.id for run in runs]
        sends = with_conversions(
            queries.sent_and_holdout(conn, run_ids),
            orders,
            conversion_days,
            queries.clicks(conn, as_of),
        )
        performance = _performance(conn, run_ids, sends, as_of)
        tests = experiments(
            sends,
            queries.variant_step_counts(conn, run_ids, as_of),
            {run.id: run.campaign_id for run in runs},
        )
        signups = queries.signups(conn, settings, as_of)
        simulated = queries.simulated_events(conn, campaign_id)
        simulated_orders = queries.simulated_orders(conn, as_of) if simulated else 0
        activity = _daily_activity(conn, as_of, days, campaign_id)
        quiet = settings.requeue_quiet_period()
        unknown_states = {
            cid: unknown.states(
                conn, campaign_id=cid, requeueable_before=as_of - quiet if quiet else None
            )
            for cid in {run.campaign_id for run in runs}
        }
        surveyed = survey_months(conn, _months_back(as_of, months), as_of, campaign_id)
    run_reports = [
        RunReport(
            run_id=run.id,
            campaign_id=run.campaign_id,
            run_key=run.run_key,
            as_of=run.as_of,
            started_at=run.started_at,
            status=run.status,
            dag_run_url=dag_run_path(run.campaign_id, run.run_key),
            performance=performance[run.id],
        )
        for run in runs
    ]
    return Report(
        as_of=as_of,
        conversion_days=conversion_days,
        active_days=active_days,
        campaigns=_by_campaign(run_reports, unknown_states, tests),
        runs=run_reports,
        months=monthly_kpis(orders, as_of, months, active_days),
        cohorts=cohort_values(signups, orders),
        days=activity,
        simulated_events=simulated,
        simulated_orders=simulated_orders,
        currency=orders["currency"].iloc[0] if len(orders) else None,
        surveys=sorted(surveyed, key=lambda s: (s.month, s.campaign_id)),
    )


def _months_back(as_of: datetime, months: int) -> datetime:
    """The start (UTC) of the calendar month `months - 1` months before as_of's."""
    index = as_of.year * 12 + as_of.month - 1 - (months - 1)
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def dag_run_path(campaign_id: str, run_key: str) -> str | None:
    """The Airflow UI path of a campaign run; the run key of an Airflow run is its run id."""
    if run_key.startswith(CLI_RUN_PREFIX):
        return None
    return f"/dags/campaign_{campaign_id}/runs/{quote(run_key, safe='')}"


def _performance(
    conn: Connection, run_ids: list[int], sends: pd.DataFrame, as_of: datetime
) -> dict[int, Performance]:
    if not run_ids:
        return {}
    return run_performance(
        run_ids,
        queries.ledger_counts(conn, run_ids),
        queries.step_counts(conn, run_ids, as_of),
        conversions_by_run(sends),
    )


def _daily_activity(
    conn: Connection, as_of: datetime, days: int, campaign_id: str | None
) -> list[DayActivity]:
    """Emails sent, and sends opened and clicked, per UTC day (dry runs left out)."""
    first_day = (as_of - timedelta(days=days - 1)).date()
    since = datetime.combine(first_day, datetime.min.time(), UTC)
    sent_per_day: dict[date, int] = defaultdict(int)
    for sent_at in queries.sent_times(conn, since, as_of, campaign_id):
        sent_per_day[sent_at.date()] += 1
    engaged_per_day: dict[tuple[date, str], set[int]] = defaultdict(set)
    for event, send_id, occurred_at in queries.opens_and_clicks(conn, since, as_of, campaign_id):
        engaged_per_day[(occurred_at.date(), event)].add(send_id)
    return [
        DayActivity(
            day,
            sent_per_day[day],
            len(engaged_per_day[(day, "open")]),
            len(engaged_per_day[(day, "click")]),
        )
        for day in (first_day + timedelta(days=i) for i in range(days))
    ]


def _by_campaign(
    runs: list[RunReport],
    unknown_states: dict[str, UnknownStates],
    tests: dict[str, Experiment],
) -> list[CampaignReport]:
    grouped: dict[str, list[RunReport]] = defaultdict(list)
    for run in runs:
        grouped[run.campaign_id].append(run)
    reports = []
    for campaign_id, campaign_runs in sorted(grouped.items()):
        total = Performance()
        for run in campaign_runs:
            total.add(run.performance)
        last = max(run.started_at for run in campaign_runs)
        reports.append(
            CampaignReport(
                campaign_id,
                len(campaign_runs),
                last,
                total,
                experiment=tests.get(campaign_id),
                unknown=unknown_states[campaign_id],
            )
        )
    return reports
