"""Proportions and their 95% intervals: the uplift of sent over holdout.

The uplift is the difference in conversion rate, sent minus holdout, with a 95% Newcombe hybrid
score interval (method 10 of Newcombe 1998, built from Wilson intervals; unlike the Wald
interval it stays inside [-1, 1] and behaves with zero conversions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

Z_95 = 1.959963984540054


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

    def __add__(self, other: Uplift) -> Uplift:
        return Uplift(
            self.sent + other.sent,
            self.sent_converted + other.sent_converted,
            self.holdout + other.holdout,
            self.holdout_converted + other.holdout_converted,
        )

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


@dataclass(frozen=True)
class Verdict:
    """Which variant won on one metric, or why none did."""

    winner: str | None
    reason: str


def pick_winner(counts: dict[str, tuple[int, int]], level: float = 0.05) -> Verdict:
    """The variant with the highest rate (`counts`: variant → (successes, trials)), only when
    the Newcombe interval of its lead over every other variant, at `level` (two-sided),
    excludes zero."""
    z = NormalDist().inv_cdf(1 - level / 2)
    measured = {v: k / n for v, (k, n) in counts.items() if n > 0}
    if len(measured) < 2:
        return Verdict(None, "fewer than two variants were sent")
    ranked = sorted(measured, key=lambda v: measured[v], reverse=True)
    best, runner_up = ranked[0], ranked[1]
    if measured[best] == measured[runner_up]:
        return Verdict(None, f"tie: {best} and {runner_up} both at {measured[best]:.2%}")
    k1, n1 = counts[best]
    for other in ranked[1:]:
        low, high = newcombe_interval(k1, n1, *counts[other], z=z)
        if low <= 0:
            return Verdict(
                None,
                f"{best} leads {other} by {measured[best] - measured[other]:+.2%} "
                f"[{low:+.2%}, {high:+.2%}], not significant at {level:g}",
            )
    return Verdict(
        best,
        f"{best} at {measured[best]:.2%} beats every other variant "
        f"(runner-up {runner_up} at {measured[runner_up]:.2%}), significant at {level:g}",
    )
