"""What a run's emails did: the funnel, conversions, revenue and uplift over the holdout.

* **Funnel**: ledger rows (audience), skipped by reason, planned (not skipped), waiting (planned,
  not sent yet: outside the customer's send window), sent, failed,
  unknown (may or may not have reached SendGrid), then the distinct sends with a delivered,
  open, click, bounce (or dropped), unsubscribe and spam report event.
* **Conversions**: each order is attributed by one of two rules (`RULES`). `last_click`: an
  order whose UTM fields name an email campaign (utm_medium `email`, utm_campaign its id) goes
  to the last email of that campaign its customer clicked before ordering. `send_window`:
  any other order goes to each email sent to its customer within `conversion_days` before it.
  A send converts when an order is attributed to it; revenue is those orders' amount; it
  counts under `last_click` when one of its orders came by a click.
* **Uplift**: the holdout gets no email, so nothing of it can be clicked: sent and holdout
  rows are compared by the send-window rule alone, the holdout's clock starting when its
  email would have gone out (see `statistics`).
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


RULES = ("last_click", "send_window")  # attribution rules, see the module's docstring
EMAIL_MEDIUM = "email"


@dataclass(frozen=True)
class Conversions:
    """The conversions of one run's sent and holdout rows."""

    conversions: int  # sends with an attributed order
    revenue: float  # of those orders
    uplift: Uplift
    by_rule: dict[str, int]  # conversions per attribution rule (RULES)


@dataclass
class Performance:
    """Funnel, conversions and uplift of one run, or of a campaign's runs together."""

    funnel: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FUNNEL_STEPS, 0))
    skipped: dict[str, int] = field(default_factory=dict)  # by skip reason
    conversions: int = 0
    revenue: float = 0.0
    uplift: Uplift = field(default_factory=lambda: Uplift(0, 0, 0, 0))
    attribution: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RULES, 0))

    def add(self, other: Performance) -> None:
        for step, count in other.funnel.items():
            self.funnel[step] += count
        for reason, count in other.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + count
        self.conversions += other.conversions
        self.revenue = round(self.revenue + other.revenue, 2)
        self.uplift += other.uplift
        for rule, count in other.attribution.items():
            self.attribution[rule] += count

    def rate(self, step: str, base: str) -> float | None:
        denominator = self.funnel[base]
        return self.funnel[step] / denominator if denominator else None

    def to_dict(self) -> dict[str, object]:
        return {
            "funnel": dict(self.funnel),
            "skipped": dict(sorted(self.skipped.items())),
            "conversions": self.conversions,
            "revenue": self.revenue,
            "attribution": dict(self.attribution),  # conversions per rule
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
        perf.attribution = dict(conversion.by_rule)
    return result


def with_conversions(
    sends: pd.DataFrame,
    orders: pd.DataFrame,
    conversion_days: float,
    clicks: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """`sends` with the orders attributed to them: columns converted, revenue, rule (RULES, or
    None), window_converted (an order within `conversion_days` after its start, whatever the
    rule: the holdout comparison) and utm_content_mismatches (orders attributed by a click
    whose utm_content is not the email's variant). Orders with UTM fields go by `clicks`
    (`queries.clicks`) when one matches; without `clicks`, every order goes by the window."""
    window = pd.Timedelta(days=conversion_days)
    orders = orders.reset_index(drop=True)
    clicked = _last_clicked(orders, clicks)
    matched = sends.merge(orders.rename_axis("order").reset_index(), on="customer_id")
    matched = matched[
        (matched["placed_at"] > matched["start"])
        & (matched["placed_at"] <= matched["start"] + window)
    ]
    in_window = matched[~matched["order"].isin(clicked.index)]
    by_window = in_window.groupby("send_id")["amount"].sum()
    by_click = orders.loc[clicked.index, "amount"].groupby(clicked["send_id"].to_numpy()).sum()
    mismatches = clicked.groupby("send_id")["content_mismatch"].sum()
    click_revenue = sends["send_id"].map(by_click).fillna(0.0)
    revenue = click_revenue + sends["send_id"].map(by_window).fillna(0.0)
    from_click = sends["send_id"].isin(by_click.index)
    from_window = sends["send_id"].isin(by_window.index)
    rule = pd.Series(None, index=sends.index, dtype=object)
    rule[from_window] = RULES[1]
    rule[from_click] = RULES[0]
    return sends.assign(
        converted=from_click | from_window,
        revenue=revenue,
        rule=rule,
        window_converted=sends["send_id"].isin(matched["send_id"]),
        utm_content_mismatches=sends["send_id"].map(mismatches).fillna(0).astype("int64"),
    )


def _last_clicked(orders: pd.DataFrame, clicks: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per order (index) whose UTM fields name an email campaign: send_id, the last email of
    that campaign its customer clicked before the order, if any; content_mismatch, the order's
    utm_content is not that email's variant (the ledger's variant is the one counted)."""
    columns = ["send_id", "content_mismatch"]
    if clicks is None:
        return pd.DataFrame(columns=columns).astype({"send_id": "int64", "content_mismatch": bool})
    tagged = orders[
        (orders["utm_medium"].str.lower() == EMAIL_MEDIUM) & orders["utm_campaign"].notna()
    ]
    pairs = (
        tagged.rename_axis("order")
        .reset_index()
        .merge(
            clicks,
            left_on=["customer_id", "utm_campaign"],
            right_on=["customer_id", "campaign_id"],
        )
    )
    pairs = pairs[pairs["clicked_at"] < pairs["placed_at"]]
    last = pairs.sort_values(["clicked_at", "send_id"]).groupby("order").tail(1)
    last = last.assign(
        content_mismatch=last["utm_content"].notna() & (last["utm_content"] != last["variant"])
    )
    return last.set_index("order")[columns].astype({"send_id": "int64"})


def conversions_by_run(sends: pd.DataFrame) -> dict[int, Conversions]:
    """Conversions of each run with sent or holdout rows (`queries.sent_and_holdout` with
    `with_conversions`); the uplift compares them by the send-window rule."""
    if sends.empty:
        return {}
    result = {}
    for run_id, group in sends.groupby("run_id"):
        sent, held = group[group["sent"]], group[~group["sent"]]
        result[int(cast(int, run_id))] = Conversions(
            conversions=int(sent["converted"].sum()),
            revenue=round(float(sent["revenue"].sum()), 2),
            uplift=Uplift(
                len(sent),
                int(sent["window_converted"].sum()),
                len(held),
                int(held["window_converted"].sum()),
            ),
            by_rule={rule: int((sent["rule"] == rule).sum()) for rule in RULES},
        )
    return result
