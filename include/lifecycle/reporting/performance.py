"""What a run's emails did: the funnel, conversions, revenue and uplift over the holdout.

* **Funnel**: ledger rows (audience), skipped by reason, planned (not skipped), waiting (planned,
  not sent yet: outside the customer's send window), sent, failed,
  unknown (may or may not have reached SendGrid), then the distinct sends with a delivered,
  open, click, bounce (or dropped), unsubscribe and spam report event.
* **Conversions**: a send converts when its customer places an order within `conversion_days`
  after it; revenue is those orders' amount. Holdout rows convert the same way, from when
  their email would have gone out, which gives the uplift (see `statistics`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

import pandas as pd

from lifecycle.reporting.queries import LedgerCount, StepCount
from lifecycle.reporting.statistics import Uplift
from lifecycle.store.states import LedgerStatus

FUNNEL_STEPS = (
    "audience",
    "skipped",
    "planned",
    "waiting",  # planned, not sent yet: waiting for the customer's send window (or a retry)
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
# Ledger states counted as a funnel step of the same name.
COUNTED_STATES = (LedgerStatus.SENT, LedgerStatus.FAILED, LedgerStatus.UNKNOWN)


@dataclass(frozen=True)
class Conversions:
    """The conversions of one run's sent and holdout rows."""

    conversions: int  # sends followed by an order within the window
    revenue: float  # of those orders
    uplift: Uplift


@dataclass
class Performance:
    """Funnel, conversions and uplift of one run, or of a campaign's runs together."""

    funnel: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FUNNEL_STEPS, 0))
    skipped: dict[str, int] = field(default_factory=dict)  # by skip reason
    conversions: int = 0
    revenue: float = 0.0
    uplift: Uplift = field(default_factory=lambda: Uplift(0, 0, 0, 0))

    def add(self, other: Performance) -> None:
        for step, count in other.funnel.items():
            self.funnel[step] += count
        for reason, count in other.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + count
        self.conversions += other.conversions
        self.revenue = round(self.revenue + other.revenue, 2)
        self.uplift += other.uplift

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


def run_performance(
    run_ids: Iterable[int],
    ledger: Iterable[LedgerCount],
    steps: Iterable[StepCount],
    conversions: dict[int, Conversions],
) -> dict[int, Performance]:
    """Each run's performance from its ledger counts, event step counts and conversions."""
    result = {run_id: Performance() for run_id in run_ids}
    for row in ledger:
        perf = result[row.run_id]
        perf.funnel["audience"] += row.count
        if row.status == LedgerStatus.SKIPPED:
            reason = row.reason or "unknown"
            perf.funnel["skipped"] += row.count
            perf.skipped[reason] = perf.skipped.get(reason, 0) + row.count
        else:
            perf.funnel["planned"] += row.count
        if row.status == LedgerStatus.PLANNED:
            perf.funnel["waiting"] += row.count
        if row.status in COUNTED_STATES:
            perf.funnel[row.status] += row.count
    for step in steps:
        result[step.run_id].funnel[step.step] += step.count
    for run_id, conversion in conversions.items():
        perf = result[run_id]
        perf.conversions = conversion.conversions
        perf.revenue = conversion.revenue
        perf.uplift = conversion.uplift
    return result


def with_conversions(
    sends: pd.DataFrame, orders: pd.DataFrame, conversion_days: float
) -> pd.DataFrame:
    """`sends` with columns converted (an order within `conversion_days` after its start) and
    revenue (of those orders)."""
    window = pd.Timedelta(days=conversion_days)
    matched = sends.merge(orders, on="customer_id")
    matched = matched[
        (matched["placed_at"] > matched["start"])
        & (matched["placed_at"] <= matched["start"] + window)
    ]
    per_send = matched.groupby("send_id")["amount"].sum()
    return sends.assign(
        converted=sends["send_id"].isin(per_send.index),
        revenue=sends["send_id"].map(per_send).fillna(0.0),
    )


def conversions_by_run(sends: pd.DataFrame) -> dict[int, Conversions]:
    """Conversions of each run with sent or holdout rows (`queries.sent_and_holdout` with
    `with_conversions`: orders placed within the conversion window after each row's start)."""
    if sends.empty:
        return {}
    result = {}
    for run_id, group in sends.groupby("run_id"):
        sent, held = group[group["sent"]], group[~group["sent"]]
        result[int(cast(int, run_id))] = Conversions(
            conversions=int(sent["converted"].sum()),
            revenue=round(float(sent["revenue"].sum()), 2),
            uplift=Uplift(
                len(sent), int(sent["converted"].sum()), len(held), int(held["converted"].sum())
            ),
        )
    return result
