"""What the campaigns did for retention: funnels, conversions, uplift and monthly KPIs.

Everything is computed from the warehouse relative to an explicit `as_of`:

* **Funnel** per run and per campaign, from `send_ledger` and `engagement_events`: ledger rows
  (audience), skipped by reason, planned (not skipped), sent, failed, unknown (may or may not
  have reached SendGrid), then the distinct sends
  with a delivered, open, click, bounce (or dropped), unsubscribe and spam report event. Dry
  runs are left out: they send nothing.
* **Conversions**: a send converts when its customer places an order within `conversion_days`
  after it (orders come from `include/sql/report_orders.sql`); revenue is those orders' amount.
* **Uplift** against the holdout group (ledger rows skipped with reason `holdout`), whose clock
  starts when the email would have gone out (`send_after`, else `planned_at`): the difference in
  conversion rate, sent minus holdout, with a 95% Newcombe hybrid score interval (method 10 of
  Newcombe 1998, built from Wilson intervals; unlike the Wald interval it stays inside [-1, 1]
  and behaves with zero conversions).
* **Retention by calendar month (UTC)**. A customer is *active* at an instant when they placed
  an order in the `active_days` (default 365) before it; *new* in a month when their first order
  falls in it. CRR = (active at end − new) / active at start × 100; churn = active at start but
  not at end / active at start × 100; repeat purchase rate = customers with two or more orders /
  customers with at least one, by the end of the month.
* **Average lifetime value by signup cohort** (signup month, UTC): all revenue of the cohort up
  to `as_of` divided by the customers who signed up that month, buyers or not.

Revenue adds up order amounts as stored: orders in several currencies are refused.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Numeric,
    String,
    and_,
    case,
    distinct,
    false,
    func,
    or_,
    select,
    text,
)

from lifecycle.core.config import Settings
from lifecycle.store import schema

Z_95 = 1.959963984540054
CLI_RUN_PREFIX = "cli__"  # run keys `lifecycle run` makes (lifecycle.run.pipeline.run_campaign)

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
FUNNEL_STEPS = (
    "audience",
    "skipped",
    "planned",
    "sent",
    "failed",
    "unknown",  # may or may not have reached SendGrid; never resent automatically
    "delivered",
    "opened",
    "clicked",
    "bounced",
    "unsubscribed",
    "spam_reports",
)


class ReportError(ValueError):
    """The warehouse cannot give a sound report (e.g. orders in several currencies)."""


@dataclass(frozen=True)
class Uplift:
    """Conversion of sent vs holdout; rates and interval as proportions (0.05 = 5 points)."""

    sent: int
    sent_converted: int
    holdout: int
    holdout_converted: int

    @property
    def sent_rate(self) -> float | None:
        return self.sent_converted / self.sent if self.sent else None

    @property
    def holdout_rate(self) -> float | None:
        return self.holdout_converted / self.holdout if self.holdout else None

    @property
    def difference(self) -> float | None:
        if self.sent_rate is None or self.holdout_rate is None:
            return None
        return self.sent_rate - self.holdout_rate

    @property
    def interval(self) -> tuple[float, float] | None:
        if not self.sent or not self.holdout:
            return None
        return newcombe_interval(
            self.sent_converted, self.sent, self.holdout_converted, self.holdout
        )

    @property
    def significant(self) -> bool:
        """True when the 95% interval excludes zero."""
        bounds = self.interval
        return bounds is not None and (bounds[0] > 0 or bounds[1] < 0)

    def to_dict(self) -> dict[str, object]:
        bounds = self.interval
        return {
            "sent": self.sent,
            "sent_converted": self.sent_converted,
            "holdout": self.holdout,
            "holdout_converted": self.holdout_converted,
            "sent_rate": self.sent_rate,
            "holdout_rate": self.holdout_rate,
            "difference": self.difference,
            "ci_low": bounds[0] if bounds else None,
            "ci_high": bounds[1] if bounds else None,
            "significant": self.significant,
        }


@dataclass
class Performance:
    """Funnel, conversions and uplift of one run, or of a campaign's runs together."""

    funnel: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FUNNEL_STEPS, 0))
    skipped: dict[str, int] = field(default_factory=dict)
    conversions: int = 0
    revenue: float = 0.0
    uplift: Uplift = Uplift(0, 0, 0, 0)

    def add(self, other: Performance) -> None:
        for step, count in other.funnel.items():
            self.funnel[step] += count
        for reason, count in other.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + count
        self.conversions += other.conversions
        self.revenue = round(self.revenue + other.revenue, 2)
        u, o = self.uplift, other.uplift
        self.uplift = Uplift(
            u.sent + o.sent,
            u.sent_converted + o.sent_converted,
            u.holdout + o.holdout,
            u.holdout_converted + o.holdout_converted,
        )

    def rate(self, step: str, base: str) -> float | None:
        denominator = self.funnel[base]
        return self.funnel[step] / denominator if denominator else None

    def to_dict(self) -> dict[str, object]:
        return {
            "funnel": dict(self.funnel),
            "skipped": dict(sorted(self.skipped.items())),
            "conversions": self.conversions,
            "revenue": self.revenue,
            "uplift": self.uplift.to_dict(),
        }


@dataclass
class RunReport:
    run_id: int
    campaign_id: str
    run_key: str
    as_of: datetime
    started_at: datetime
    status: str
    dag_run_url: str | None  # None: the run did not come from Airflow (`lifecycle run`)
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

    def to_dict(self) -> dict[str, object]:
        return {
            "campaign_id": self.campaign_id,
            "runs": self.runs,
            "last_run_at": self.last_run_at.isoformat() if self.last_run_at else None,
            **self.performance.to_dict(),
        }


@dataclass(frozen=True)
class MonthKpis:
    month: date  # first day of the calendar month (UTC)
    active_start: int
    active_end: int
    new_customers: int
    churned: int
    buyers: int  # customers with at least one order by the end of the month
    repeat_buyers: int  # ... with two or more
    revenue: float  # orders placed during the month

    @property
    def crr(self) -> float | None:
        if not self.active_start:
            return None
        return (self.active_end - self.new_customers) / self.active_start * 100

    @property
    def churn_rate(self) -> float | None:
        return self.churned / self.active_start * 100 if self.active_start else None

    @property
    def repeat_purchase_rate(self) -> float | None:
        return self.repeat_buyers / self.buyers * 100 if self.buyers else None

    def to_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "month": self.month.isoformat(),
            "crr": self.crr,
            "churn_rate": self.churn_rate,
            "repeat_purchase_rate": self.repeat_purchase_rate,
        }


@dataclass(frozen=True)
class CohortValue:
    cohort: date  # signup month
    customers: int
    buyers: int
    revenue: float

    @property
    def average_ltv(self) -> float:
        return self.revenue / self.customers if self.customers else 0.0

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "cohort": self.cohort.isoformat(), "average_ltv": self.average_ltv}


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
            "currency": self.currency,
            "total": self.total.to_dict(),
            "campaigns": [c.to_dict() for c in self.campaigns],
            "runs": [r.to_dict() for r in self.runs],
            "months": [m.to_dict() for m in self.months],
            "cohorts": [c.to_dict() for c in self.cohorts],
            "days": [d.to_dict() for d in self.days],
        }


# --- statistics ---------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion."""
    if n <= 0:
        raise ValueError("a proportion needs at least one trial")
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    return (centre - spread) / denominator, (centre + spread) / denominator


def newcombe_interval(k1: int, n1: int, k2: int, n2: int, z: float = Z_95) -> tuple[float, float]:
    """Interval of p1 − p2 by Newcombe's hybrid score method (his method 10)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, z)
    l2, u2 = wilson_interval(k2, n2, z)
    difference = p1 - p2
    return (
        difference - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
        difference + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2),
    )


# --- the report ---------------------------------------------------------------------------
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
        runs = _runs(conn, campaign_id, as_of)
        orders = _orders(conn, settings, as_of)
        performance = _run_performance(conn, runs, orders, as_of, conversion_days)
        signups = _signups(conn, settings, as_of)
        simulated = _simulated_events(conn, campaign_id)
        activity = _daily_activity(conn, as_of, days, campaign_id)
    run_reports = [
        RunReport(
            run_id=run["id"],
            campaign_id=run["campaign_id"],
            run_key=run["run_key"],
            as_of=run["as_of"],
            started_at=run["started_at"],
            status=run["status"],
            dag_run_url=dag_run_path(run["campaign_id"], run["run_key"]),
            performance=performance.get(run["id"], Performance()),
        )
        for run in runs
    ]
    return Report(
        as_of=as_of,
        conversion_days=conversion_days,
        active_days=active_days,
        campaigns=_by_campaign(run_reports),
        runs=run_reports,
        months=monthly_kpis(orders, as_of, months, active_days),
        cohorts=cohort_values(signups, orders),
        days=activity,
        simulated_events=simulated,
        currency=orders["currency"].iloc[0] if len(orders) else None,
    )


def campaign_ids(engine: Engine) -> list[str]:
    """Campaigns with at least one real (not dry) run."""
    r = schema.campaign_runs
    query = select(r.c.campaign_id).where(r.c.dry_run == false()).distinct()
    with engine.connect() as conn:
        return sorted(conn.execute(query).scalars())


def dag_run_path(campaign_id: str, run_key: str) -> str | None:
    """The Airflow UI path of a campaign run; the run key of an Airflow run is its run id."""
    if run_key.startswith(CLI_RUN_PREFIX):
        return None
    return f"/dags/campaign_{campaign_id}/runs/{quote(run_key, safe='')}"


def _runs(conn: Connection, campaign_id: str | None, as_of: datetime) -> list[dict]:
    r = schema.campaign_runs
    query = (
        select(r.c.id, r.c.campaign_id, r.c.run_key, r.c.as_of, r.c.started_at, r.c.status)
        .where(r.c.dry_run == false(), r.c.started_at <= as_of)
        .order_by(r.c.started_at.desc(), r.c.id.desc())
    )
    if campaign_id is not None:
        query = query.where(r.c.campaign_id == campaign_id)
    return [dict(row._mapping) for row in conn.execute(query)]


def _run_performance(
    conn: Connection,
    runs: list[dict],
    orders: pd.DataFrame,
    as_of: datetime,
    conversion_days: int,
) -> dict[int, Performance]:
    run_ids = [run["id"] for run in runs]
    result: dict[int, Performance] = {run_id: Performance() for run_id in run_ids}
    if not run_ids:
        return result
    ledger, events = schema.send_ledger, schema.engagement_events
    in_runs = ledger.c.run_id.in_(run_ids)

    by_status = select(ledger.c.run_id, ledger.c.status, ledger.c.reason, func.count()).where(
        in_runs
    )
    for run_id, status, reason, count in conn.execute(
        by_status.group_by(ledger.c.run_id, ledger.c.status, ledger.c.reason)
    ):
        perf = result[run_id]
        perf.funnel["audience"] += count
        if status == "skipped":
            perf.funnel["skipped"] += count
            perf.skipped[reason or "unknown"] = perf.skipped.get(reason or "unknown", 0) + count
        else:
            perf.funnel["planned"] += count
        if status in ("sent", "failed", "unknown"):
            perf.funnel[status] += count

    step = case(EVENT_STEPS, value=events.c.event)
    by_step = (
        select(ledger.c.run_id, step, func.count(distinct(events.c.send_id)))
        .select_from(events.join(ledger, ledger.c.id == events.c.send_id))
        .where(in_runs, events.c.event.in_(EVENT_STEPS), events.c.occurred_at <= as_of)
        .group_by(ledger.c.run_id, step)
    )
    for run_id, step_name, count in conn.execute(by_step):
        result[run_id].funnel[step_name] += count

    for run_id, conversion in _conversions(conn, in_runs, orders, conversion_days):
        result[run_id].conversions = conversion["conversions"]
        result[run_id].revenue = conversion["revenue"]
        result[run_id].uplift = conversion["uplift"]
    return result


def _conversions(conn, in_runs, orders: pd.DataFrame, conversion_days: int):  # type: ignore[no-untyped-def]
    """(run id, {conversions, revenue, uplift}) for each run with sent or holdout rows."""
    ledger = schema.send_ledger
    holdout = and_(ledger.c.status == "skipped", ledger.c.reason == "holdout")
    # Raw values, parsed in one vectorized step below (text on SQLite).
    starts = func.coalesce(ledger.c.sent_at, ledger.c.send_after, ledger.c.planned_at, type_=String)
    rows = conn.execute(
        select(
            ledger.c.id,
            ledger.c.run_id,
            ledger.c.customer_id,
            (ledger.c.status == "sent").label("sent"),
            starts.label("start"),
        ).where(in_runs, or_(ledger.c.status == "sent", holdout))
    ).all()
    if not rows:
        return
    sends = pd.DataFrame(rows, columns=["send_id", "run_id", "customer_id", "sent", "start"])
    sends["sent"] = sends["sent"].astype(bool)
    sends["start"] = _utc(sends["start"])
    window = pd.Timedelta(days=conversion_days)
    matched = sends.merge(orders, on="customer_id")
    matched = matched[
        (matched["placed_at"] > matched["start"])
        & (matched["placed_at"] <= matched["start"] + window)
    ]
    per_send = matched.groupby("send_id")["amount"].sum()
    sends["converted"] = sends["send_id"].isin(per_send.index)
    sends["revenue"] = sends["send_id"].map(per_send).fillna(0.0)
    for run_id, group in sends.groupby("run_id"):
        sent, held = group[group["sent"]], group[~group["sent"]]
        yield (
            int(run_id),
            {
                "conversions": int(sent["converted"].sum()),
                "revenue": round(float(sent["revenue"].sum()), 2),
                "uplift": Uplift(
                    len(sent), int(sent["converted"].sum()), len(held), int(held["converted"].sum())
                ),
            },
        )


def _sql(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"report query {path} cannot be read: {exc.strerror}") from None


def _orders(conn: Connection, settings: Settings, as_of: datetime) -> pd.DataFrame:
    """Revenue orders placed up to as_of, from include/sql/report_orders.sql."""
    path = Path(settings.sql_dir) / "report_orders.sql"
    # Times come back raw (text on SQLite) and are parsed in one vectorized step: converting
    # hundreds of thousands of rows one by one dominated the report's run time.
    query = text(_sql(path)).columns(customer_id=BigInteger, amount=Numeric(asdecimal=False))
    rows = conn.execute(query).all()
    frame = pd.DataFrame(rows, columns=["customer_id", "placed_at", "amount", "currency"])
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


def _signups(conn: Connection, settings: Settings, as_of: datetime) -> pd.DataFrame:
    query = text(_sql(Path(settings.sql_dir) / "report_customers.sql"))
    frame = pd.DataFrame(conn.execute(query).all(), columns=["customer_id", "signup_at"])
    frame["customer_id"] = frame["customer_id"].astype("int64")
    frame["signup_at"] = _utc(frame["signup_at"])
    return frame[frame["signup_at"] <= as_of].reset_index(drop=True)


def _utc(values: pd.Series) -> pd.Series:
    """UTC timestamps from aware datetimes (PostgreSQL) or naive UTC text (SQLite)."""
    return pd.to_datetime(values, utc=True, format="ISO8601")


def _simulated_events(conn: Connection, campaign_id: str | None) -> int:
    events = schema.engagement_events
    query = select(func.count()).select_from(events).where(events.c.simulated)
    if campaign_id is not None:
        query = query.where(events.c.campaign_id == campaign_id)
    return conn.execute(query).scalar_one()


def _daily_activity(
    conn: Connection, as_of: datetime, days: int, campaign_id: str | None
) -> list[DayActivity]:
    """Emails sent, and sends opened and clicked, per UTC day (dry runs left out)."""
    ledger, events, runs = schema.send_ledger, schema.engagement_events, schema.campaign_runs
    first_day = (as_of - timedelta(days=days - 1)).date()
    since = datetime.combine(first_day, datetime.min.time(), UTC)
    real_runs = select(runs.c.id).where(runs.c.dry_run == false())
    if campaign_id is not None:
        real_runs = real_runs.where(runs.c.campaign_id == campaign_id)
    in_real_runs = ledger.c.run_id.in_(real_runs.scalar_subquery())
    sent = conn.execute(
        select(ledger.c.sent_at).where(
            in_real_runs, ledger.c.status == "sent", ledger.c.sent_at.between(since, as_of)
        )
    ).scalars()
    engaged = conn.execute(
        select(events.c.event, events.c.send_id, events.c.occurred_at)
        .select_from(events.join(ledger, ledger.c.id == events.c.send_id))
        .where(
            in_real_runs,
            events.c.event.in_(["open", "click"]),
            events.c.occurred_at.between(since, as_of),
        )
    ).all()
    sent_per_day: dict[date, int] = defaultdict(int)
    for sent_at in sent:
        sent_per_day[sent_at.date()] += 1
    engaged_per_day: dict[tuple[date, str], set[int]] = defaultdict(set)
    for event, send_id, occurred_at in engaged:
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


def _by_campaign(runs: list[RunReport]) -> list[CampaignReport]:
    grouped: dict[str, list[RunReport]] = defaultdict(list)
    for run in runs:
        grouped[run.campaign_id].append(run)
    reports = []
    for campaign_id, campaign_runs in sorted(grouped.items()):
        total = Performance()
        for run in campaign_runs:
            total.add(run.performance)
        last = max(run.started_at for run in campaign_runs)
        reports.append(CampaignReport(campaign_id, len(campaign_runs), last, total))
    return reports


# --- retention ----------------------------------------------------------------------------
def month_starts(as_of: datetime, months: int) -> list[datetime]:
    """The first instants of the `months` full calendar months before as_of's month, and of
    as_of's month itself (so `months + 1` boundaries)."""
    first = as_of.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    boundaries = [first]
    for _ in range(months):
        previous = (boundaries[-1] - timedelta(days=1)).replace(day=1)
        boundaries.append(previous)
    return boundaries[::-1]


def monthly_kpis(
    orders: pd.DataFrame, as_of: datetime, months: int, active_days: int
) -> list[MonthKpis]:
    """CRR, churn and repeat purchase rate for each full month before as_of."""
    placed = orders["placed_at"].to_numpy(dtype="datetime64[ns]")
    customer = orders["customer_id"].to_numpy()
    amount = orders["amount"].to_numpy()
    first_order = orders.groupby("customer_id")["placed_at"].min().to_numpy(dtype="datetime64[ns]")
    window = np.timedelta64(active_days, "D")

    def active_at(instant: np.datetime64) -> np.ndarray:
        return np.unique(customer[(placed >= instant - window) & (placed < instant)])

    boundaries = [np.datetime64(b.replace(tzinfo=None), "ns") for b in month_starts(as_of, months)]
    results = []
    for start, end in itertools.pairwise(boundaries):
        at_start, at_end = active_at(start), active_at(end)
        in_month = (placed >= start) & (placed < end)
        _, orders_by_end = np.unique(customer[placed < end], return_counts=True)
        results.append(
            MonthKpis(
                month=start.astype("datetime64[D]").item(),
                active_start=len(at_start),
                active_end=len(at_end),
                new_customers=int(((first_order >= start) & (first_order < end)).sum()),
                churned=len(np.setdiff1d(at_start, at_end, assume_unique=True)),
                buyers=len(orders_by_end),
                repeat_buyers=int((orders_by_end >= 2).sum()),
                revenue=round(float(amount[in_month].sum()), 2),
            )
        )
    return results


def cohort_values(signups: pd.DataFrame, orders: pd.DataFrame) -> list[CohortValue]:
    """Average lifetime value per signup month: cohort revenue / cohort customers."""
    if signups.empty:
        return []
    cohort = signups["signup_at"].dt.tz_localize(None).dt.to_period("M")
    customers = pd.DataFrame({"customer_id": signups["customer_id"], "cohort": cohort})
    spend = orders.groupby("customer_id")["amount"].sum()
    customers["revenue"] = customers["customer_id"].map(spend)
    grouped = customers.groupby("cohort").agg(
        customers=("customer_id", "size"),
        buyers=("revenue", "count"),
        revenue=("revenue", "sum"),
    )
    return [
        CohortValue(
            cohort=period.start_time.date(),
            customers=int(row.customers),
            buyers=int(row.buyers),
            revenue=round(float(row.revenue), 2),
        )
        for period, row in grouped.sort_index().iterrows()
    ]


# --- output -------------------------------------------------------------------------------
RUN_COLUMNS = ("campaign_id", "run_id", "run_key", "as_of", "status", *FUNNEL_STEPS)


def runs_csv(report: Report) -> str:
    """One row per run: funnel, skip reasons, conversions, revenue and uplift."""
    reasons = sorted({reason for run in report.runs for reason in run.performance.skipped})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            *RUN_COLUMNS,
            *(f"skipped_{reason}" for reason in reasons),
            "conversions",
            "revenue",
            "holdout",
            "holdout_converted",
            "uplift",
            "uplift_ci_low",
            "uplift_ci_high",
        ]
    )
    for run in report.runs:
        perf = run.performance
        uplift = perf.uplift.to_dict()
        writer.writerow(
            [
                run.campaign_id,
                run.run_id,
                run.run_key,
                run.as_of.isoformat(),
                run.status,
                *(perf.funnel[step] for step in FUNNEL_STEPS),
                *(perf.skipped.get(reason, 0) for reason in reasons),
                perf.conversions,
                f"{perf.revenue:.2f}",
                perf.uplift.holdout,
                perf.uplift.holdout_converted,
                _blank(uplift["difference"]),
                _blank(uplift["ci_low"]),
                _blank(uplift["ci_high"]),
            ]
        )
    return buffer.getvalue()


def retention_csv(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "month",
            "active_start",
            "active_end",
            "new_customers",
            "churned",
            "crr_percent",
            "churn_percent",
            "repeat_purchase_percent",
            "revenue",
        ]
    )
    for m in report.months:
        writer.writerow(
            [
                m.month.isoformat(),
                m.active_start,
                m.active_end,
                m.new_customers,
                m.churned,
                _blank(m.crr),
                _blank(m.churn_rate),
                _blank(m.repeat_purchase_rate),
                f"{m.revenue:.2f}",
            ]
        )
    return buffer.getvalue()


def cohorts_csv(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["signup_month", "customers", "buyers", "revenue", "average_ltv"])
    for c in report.cohorts:
        writer.writerow(
            [
                c.cohort.isoformat(),
                c.customers,
                c.buyers,
                f"{c.revenue:.2f}",
                f"{c.average_ltv:.2f}",
            ]
        )
    return buffer.getvalue()


def _blank(value: object) -> object:
    if value is None:
        return ""
    return f"{value:.6f}" if isinstance(value, float) else value


def format_table(report: Report) -> str:
    """A plain-text summary for the terminal and the DAG log."""
    lines = [f"Report as of {report.as_of:%Y-%m-%d %H:%M} UTC"]
    if report.simulated_events:
        lines.append(
            f"NOTE: {report.simulated_events:,} engagement events are SIMULATED (demo data)."
        )
    header = (
        f"{'campaign':<18}{'runs':>5}{'sent':>8}{'deliv':>8}{'opened':>8}{'clicked':>8}"
        f"{'bounce':>7}{'unsub':>6}{'spam':>5}{'conv':>6}{'revenue':>11}  uplift (95% CI)"
    )
    lines += ["", header, "-" * len(header)]
    for campaign in report.campaigns:
        f = campaign.performance.funnel
        perf = campaign.performance
        lines.append(
            f"{campaign.campaign_id:<18}{campaign.runs:>5}{f['sent']:>8,}{f['delivered']:>8,}"
            f"{f['opened']:>8,}{f['clicked']:>8,}{f['bounced']:>7,}{f['unsubscribed']:>6,}"
            f"{f['spam_reports']:>5,}{perf.conversions:>6,}{perf.revenue:>11,.2f}  "
            f"{describe_uplift(perf.uplift)}"
        )
        if perf.skipped:
            reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(perf.skipped.items()))
            lines.append(f"{'':<18}skipped: {reasons}")
    if report.months:
        lines += [
            "",
            f"{'month':<10}{'active':>9}{'new':>7}{'CRR %':>8}{'churn %':>9}{'repeat %':>9}",
        ]
        for m in report.months:
            lines.append(
                f"{m.month:%Y-%m}    {m.active_end:>9,}{m.new_customers:>7,}"
                f"{_pct(m.crr):>8}{_pct(m.churn_rate):>9}{_pct(m.repeat_purchase_rate):>9}"
            )
    return "\n".join(lines)


def describe_uplift(uplift: Uplift) -> str:
    bounds = uplift.interval
    if bounds is None or uplift.difference is None:
        return "no holdout" if not uplift.holdout else "nothing sent"
    return f"{uplift.difference * 100:+.1f} pts [{bounds[0] * 100:+.1f}, {bounds[1] * 100:+.1f}]"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"
