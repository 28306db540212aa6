"""Test then send the winner: after the test slice's wait, pick the variant for the rest.

The test slice (`core.variants.in_test_slice`) is planned and sent first, every variant by
weight. Once the spec's `wait_hours` have passed, `decide` measures the spec's metric per
variant on the run's test sends (distinct sends with an open or a click, or followed by an
order within the wait), and names the best variant only when its lead is significant at the
spec's level (`reporting.statistics.pick_winner`); otherwise the spec's fallback. The decision
(variant, figures, reason) is recorded on the run once: a retried task gets the same one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine, distinct, func, select

from lifecycle.core.campaigns import CampaignSpec, Experiment
from lifecycle.core.config import Settings
from lifecycle.reporting import queries
from lifecycle.reporting.performance import with_conversions
from lifecycle.reporting.statistics import pick_winner
from lifecycle.store import runs, schema
from lifecycle.store.states import LedgerStatus

EVENTS = {"unique_opens": "open", "clicks": "click"}


@dataclass(frozen=True)
class Decision:
    winner: str  # the variant the rest of the audience gets
    chosen_by: str  # "significant" or "fallback"
    metric: str
    figures: dict[str, dict[str, int]]  # variant -> {"sent": n, "<metric>": k}
    reason: str
    decided_at: str  # ISO UTC

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        return cls(**data)


def results_due(spec: CampaignSpec, tests_sent_at: datetime) -> datetime:
    """When the test slice's results are read."""
    return tests_sent_at + timedelta(hours=_experiment(spec).wait_hours)


def decide(
    engine: Engine, spec: CampaignSpec, settings: Settings, *, run_id: int, now: datetime
) -> Decision:
    """The winner for the rest of run `run_id`, decided once and recorded on the run."""
    experiment = _experiment(spec)
    with engine.begin() as conn:
        recorded = runs.experiment_of(conn, run_id)
        if recorded is not None:
            return Decision.from_dict(recorded)
        figures = _figures(conn, settings, experiment, run_id, now)
        counts = {v: (f[experiment.metric], f["sent"]) for v, f in figures.items()}
        verdict = pick_winner(counts, experiment.significance)
        if verdict.winner is not None:
            winner, chosen_by, reason = verdict.winner, "significant", verdict.reason
        else:
            winner, chosen_by = experiment.fallback, "fallback"
            reason = f"no significant winner ({verdict.reason}): fallback {experiment.fallback}"
        decision = Decision(winner, chosen_by, experiment.metric, figures, reason, now.isoformat())
        return Decision.from_dict(runs.record_experiment(conn, run_id, decision.to_dict()))


def _figures(
    conn: Connection, settings: Settings, experiment: Experiment, run_id: int, now: datetime
) -> dict[str, dict[str, int]]:
    """Per variant sent in the test: sends, and sends that did the metric by `now`."""
    ledger, events = schema.send_ledger, schema.engagement_events
    sent_rows = ledger.c.run_id == run_id, ledger.c.status == LedgerStatus.SENT
    query = (
        select(ledger.c.variant, func.count())
        .where(*sent_rows, ledger.c.variant.is_not(None))
        .group_by(ledger.c.variant)
    )
    sent = {variant: int(n) for variant, n in conn.execute(query)}
    metric = experiment.metric
    if metric in EVENTS:
        query = (
            select(ledger.c.variant, func.count(distinct(events.c.send_id)))
            .select_from(events.join(ledger, ledger.c.id == events.c.send_id))
            .where(*sent_rows, events.c.event == EVENTS[metric], events.c.occurred_at <= now)
            .group_by(ledger.c.variant)
        )
        done = {variant: int(n) for variant, n in conn.execute(query)}
    else:
        sends = queries.sent_and_holdout(conn, [run_id])
        orders = queries.orders(conn, settings, now)
        converted = with_conversions(sends[sends["sent"]], orders, experiment.wait_hours / 24)
        done = _per_variant(converted)
    return {v: {"sent": n, metric: done.get(v, 0)} for v, n in sorted(sent.items())}


def _per_variant(sends: pd.DataFrame) -> dict[str, int]:
    return {str(v): int(n) for v, n in sends.groupby("variant")["converted"].sum().items()}


def _experiment(spec: CampaignSpec) -> Experiment:
    if spec.experiment is None:
        raise ValueError(f"campaign {spec.id} has no experiment")
    return spec.experiment
