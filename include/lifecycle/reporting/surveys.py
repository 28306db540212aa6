"""Survey results per campaign and month: NPS, response rate and the score distribution.

* **Month**: the calendar month (UTC) the surveyed emails were sent, so a month's responses and
  its response rate describe the same emails, however late the answers came.
* **Response rate** = emails answered ÷ emails sent, with a 95% Wilson interval.
* **NPS** = % promoters (9–10) − % detractors (0–6), from −100 to 100, with a 95% adjusted-Wald
  interval (Rocks 2016, *The American Statistician*; Sauro & Lewis): add 3 to the responses and
  ¾ to the promoters and to the detractors, then NPS′ ± z·√((p′ + d′ − (p′ − d′)²) / n′),
  clipped to [−100, 100]. Rocks found it the best of six methods, small samples included.

A campaign is surveyed when it has at least one response; its emails count as sent when the
ledger says `sent` (or, answered, whatever it says: an answer proves the email arrived).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import Connection, and_, func, or_, select

from lifecycle.reporting.statistics import Z_95, wilson_interval
from lifecycle.store.schema import send_ledger, survey_responses
from lifecycle.store.states import LedgerStatus

PROMOTERS = range(9, 11)
DETRACTORS = range(0, 7)


def nps_interval(promoters: int, detractors: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Adjusted-Wald 95% interval of the NPS, in NPS points (−100..100)."""
    if n <= 0:
        raise ValueError("an NPS needs at least one response")
    adjusted_n = n + 3
    p = (promoters + 0.75) / adjusted_n
    d = (detractors + 0.75) / adjusted_n
    centre = p - d
    spread = z * math.sqrt((p + d - centre * centre) / adjusted_n)
    return max(-1.0, centre - spread) * 100, min(1.0, centre + spread) * 100


@dataclass(frozen=True)
class SurveyMonth:
    campaign_id: str
    month: date  # first day of the calendar month (UTC) the emails were sent
    sent: int
    distribution: tuple[int, ...]  # responses per score, 0 to 10

    @property
    def responses(self) -> int:
        return sum(self.distribution)

    @property
    def promoters(self) -> int:
        return sum(self.distribution[score] for score in PROMOTERS)

    @property
    def detractors(self) -> int:
        return sum(self.distribution[score] for score in DETRACTORS)

    @property
    def passives(self) -> int:
        return self.responses - self.promoters - self.detractors

    @property
    def nps(self) -> float | None:
        if not self.responses:
            return None
        return (self.promoters - self.detractors) / self.responses * 100

    @property
    def nps_interval(self) -> tuple[float, float] | None:
        if not self.responses:
            return None
        return nps_interval(self.promoters, self.detractors, self.responses)

    @property
    def response_rate(self) -> float | None:
        return self.responses / self.sent if self.sent else None

    @property
    def response_rate_interval(self) -> tuple[float, float] | None:
        return wilson_interval(self.responses, self.sent) if self.sent else None

    def to_dict(self) -> dict[str, object]:
        nps_bounds, rate_bounds = self.nps_interval, self.response_rate_interval
        return {
            "campaign_id": self.campaign_id,
            "month": self.month.isoformat(),
            "sent": self.sent,
            "responses": self.responses,
            "promoters": self.promoters,
            "passives": self.passives,
            "detractors": self.detractors,
            "nps": self.nps,
            "nps_ci_low": nps_bounds[0] if nps_bounds else None,
            "nps_ci_high": nps_bounds[1] if nps_bounds else None,
            "response_rate": self.response_rate,
            "response_rate_ci_low": rate_bounds[0] if rate_bounds else None,
            "response_rate_ci_high": rate_bounds[1] if rate_bounds else None,
            "distribution": list(self.distribution),
        }


def survey_months(
    conn: Connection, since: datetime, as_of: datetime, campaign_id: str | None = None
) -> list[SurveyMonth]:
    """Per surveyed campaign and month of sending in [since, as_of]: sent, answered, scores."""
    ledger, answers = send_ledger.c, survey_responses.c
    surveyed = select(answers.campaign_id).distinct().scalar_subquery()
    # An answered row of unknown fate has no sent_at: it was sent when it was claimed.
    sent_at = func.coalesce(ledger.sent_at, ledger.claimed_at, ledger.planned_at)
    query = (
        select(ledger.campaign_id, sent_at, answers.score)
        .select_from(
            send_ledger.outerjoin(
                survey_responses,
                and_(answers.send_id == ledger.id, answers.answered_at <= as_of),
            )
        )
        .where(
            ledger.campaign_id.in_(surveyed),
            sent_at >= since,
            sent_at <= as_of,
            or_(ledger.status == LedgerStatus.SENT, answers.score.is_not(None)),
        )
    )
    if campaign_id is not None:
        query = query.where(ledger.campaign_id == campaign_id)
    sent: dict[tuple[str, date], int] = defaultdict(int)
    scores: dict[tuple[str, date], list[int]] = defaultdict(lambda: [0] * 11)
    for campaign, sent_on, score in conn.execute(query):
        key = (campaign, sent_on.astimezone(UTC).date().replace(day=1))
        sent[key] += 1
        if score is not None:
            scores[key][score] += 1
    return [
        SurveyMonth(campaign, month, sent[(campaign, month)], tuple(scores[(campaign, month)]))
        for campaign, month in sorted(sent)
    ]
