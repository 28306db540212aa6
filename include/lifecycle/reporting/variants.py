"""A/B/n results of a campaign: per variant the funnel, conversion and revenue with 95%
intervals, each variant's difference in conversion from the first one with its Newcombe
interval, and the winner on each metric (`statistics.pick_winner`: opens, clicks,
conversions; `winner` is the conversions one), over all the campaign's runs.

A send's conversion follows the report's attribution (`performance.with_conversions`): an
order through a clicked email's link (its UTM fields) goes to the last email of that campaign
the customer clicked; any other order to the emails sent within the conversion window before
it. `attribution` counts the conversions per rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from lifecycle.reporting.performance import RULES
from lifecycle.reporting.statistics import (
    Z_95,
    Verdict,
    newcombe_interval,
    pick_winner,
    wilson_interval,
)

STEPS = ("delivered", "opened", "clicked")
METRICS = {"unique_opens": "opened", "clicks": "clicked", "conversions": "converted"}


@dataclass(frozen=True)
class Proportion:
    successes: int
    trials: int

    @property
    def rate(self) -> float | None:
        return self.successes / self.trials if self.trials else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson_interval(self.successes, self.trials) if self.trials else None

    def to_dict(self) -> dict[str, object]:
        bounds = self.interval
        return {
            "count": self.successes,
            "rate": self.rate,
            "ci_low": bounds[0] if bounds else None,
            "ci_high": bounds[1] if bounds else None,
        }


@dataclass(frozen=True)
class VariantResult:
    variant: str
    sent: int
    steps: dict[str, int]  # delivered, opened, clicked: distinct sends
    conversions: int
    revenue: float
    revenue_per_send_ci: tuple[float, float] | None  # 95%, normal approximation
    attribution: dict[str, int]  # conversions per attribution rule (performance.RULES)
    # orders attributed by a click whose utm_content names another variant than the ledger's
    utm_content_mismatches: int = 0

    def proportion(self, step: str) -> Proportion:
        count = self.conversions if step == "converted" else self.steps[step]
        return Proportion(count, self.sent)

    def to_dict(self) -> dict[str, object]:
        bounds = self.revenue_per_send_ci
        return {
            "variant": self.variant,
            "sent": self.sent,
            **{step: self.proportion(step).to_dict() for step in (*STEPS, "converted")},
            "revenue": self.revenue,
            "revenue_per_send": round(self.revenue / self.sent, 4) if self.sent else None,
            "revenue_per_send_ci_low": bounds[0] if bounds else None,
            "revenue_per_send_ci_high": bounds[1] if bounds else None,
            "attribution": dict(self.attribution),
            "utm_content_mismatches": self.utm_content_mismatches,
        }


@dataclass(frozen=True)
class Difference:
    """Conversion rate of `variant` minus `baseline`'s, with a 95% Newcombe interval."""

    variant: str
    baseline: str
    difference: float | None
    interval: tuple[float, float] | None

    def to_dict(self) -> dict[str, object]:
        bounds = self.interval
        return {
            "variant": self.variant,
            "baseline": self.baseline,
            "difference": self.difference,
            "ci_low": bounds[0] if bounds else None,
            "ci_high": bounds[1] if bounds else None,
            "significant": bounds is not None and (bounds[0] > 0 or bounds[1] < 0),
        }


@dataclass(frozen=True)
class Experiment:
    campaign_id: str
    variants: list[VariantResult]
    differences: list[Difference] = field(default_factory=list)
    verdicts: dict[str, Verdict] = field(default_factory=dict)  # by metric (METRICS)

    @property
    def winner(self) -> str | None:
        """The winner on conversions."""
        verdict = self.verdicts.get("conversions")
        return verdict.winner if verdict else None

    @property
    def attribution(self) -> dict[str, int]:
        """Conversions per attribution rule, all variants together."""
        return {rule: sum(v.attribution[rule] for v in self.variants) for rule in RULES}

    @property
    def reason(self) -> str:
        verdict = self.verdicts.get("conversions")
        return verdict.reason if verdict else ""

    def to_dict(self) -> dict[str, object]:
        return {
            "variants": [v.to_dict() for v in self.variants],
            "differences": [d.to_dict() for d in self.differences],
            "winner": self.winner,
            "winner_metric": "conversions",
            "winner_reason": self.reason,
            "winners": {
                metric: {"winner": v.winner, "reason": v.reason}
                for metric, v in self.verdicts.items()
            },
            "attribution": self.attribution,
            "utm_content_mismatches": sum(v.utm_content_mismatches for v in self.variants),
        }


def experiments(
    sends: pd.DataFrame, steps: list[tuple[str, str, str, int]], campaign_of: dict[int, str]
) -> dict[str, Experiment]:
    """Per campaign with variants: its `Experiment`. `sends`: sent and holdout rows with their
    conversions (`performance.with_conversions`); `steps`: `queries.variant_step_counts`;
    `campaign_of`: run id → campaign."""
    sent = sends[sends["sent"] & sends["variant"].notna()]
    if sent.empty:
        return {}
    sent = sent.assign(campaign_id=sent["run_id"].map(campaign_of))
    counted = {(c, v, s): n for c, v, s, n in steps}
    result = {}
    for campaign_id, rows in sent.groupby("campaign_id", sort=True):
        variants = [
            _result(str(variant), group, str(campaign_id), counted)
            for variant, group in rows.groupby("variant", sort=True)
        ]
        verdicts = {
            metric: pick_winner(
                {v.variant: (v.proportion(step).successes, v.sent) for v in variants}
            )
            for metric, step in METRICS.items()
        }
        result[str(campaign_id)] = Experiment(
            str(campaign_id),
            variants,
            [_difference(v, variants[0]) for v in variants[1:]],
            verdicts,
        )
    return result


def _result(
    variant: str, rows: pd.DataFrame, campaign_id: str, counted: dict[tuple[str, str, str], int]
) -> VariantResult:
    revenue = rows["revenue"].astype(float)
    n = len(rows)
    spread = Z_95 * float(revenue.std(ddof=1)) / math.sqrt(n) if n > 1 else None
    mean = float(revenue.mean())
    return VariantResult(
        variant=variant,
        sent=n,
        steps={step: counted.get((campaign_id, variant, step), 0) for step in STEPS},
        conversions=int(rows["converted"].sum()),
        revenue=round(float(revenue.sum()), 2),
        revenue_per_send_ci=None if spread is None else (mean - spread, mean + spread),
        attribution={rule: int((rows["rule"] == rule).sum()) for rule in RULES},
        utm_content_mismatches=int(rows["utm_content_mismatches"].sum()),
    )


def _difference(variant: VariantResult, baseline: VariantResult) -> Difference:
    a, b = variant.proportion("converted"), baseline.proportion("converted")
    if a.rate is None or b.rate is None:
        return Difference(variant.variant, baseline.variant, None, None)
    bounds = newcombe_interval(a.successes, a.trials, b.successes, b.trials)
    return Difference(variant.variant, baseline.variant, a.rate - b.rate, bounds)
