"""Retention by calendar month and lifetime value by signup cohort, from the orders.

* **Retention by calendar month (UTC)**. A customer is *active* at an instant when they placed
  an order in the `active_days` (default 365) before it; *new* in a month when their first order
  falls in it. CRR = (active at end − new) / active at start × 100; churn = active at start but
  not at end / active at start × 100; repeat purchase rate = customers with two or more orders /
  customers with at least one, by the end of the month.
* **Average lifetime value by signup cohort** (signup month, UTC): all revenue of the cohort up
  to `as_of` divided by the customers who signed up that month, buyers or not.

The frames are those of `queries.orders` and `queries.signups`.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import cast

import numpy as np
import pandas as pd


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
    grouped = grouped.sort_index()
    starts = cast(pd.PeriodIndex, grouped.index).start_time
    return [
        CohortValue(
            cohort=start.date(),
            customers=int(customers),
            buyers=int(buyers),
            revenue=round(float(revenue), 2),
        )
        for start, customers, buyers, revenue in zip(
            starts,
            grouped["customers"].tolist(),
            grouped["buyers"].tolist(),
            grouped["revenue"].tolist(),
            strict=True,
        )
    ]
