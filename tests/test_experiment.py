"""Test then send the winner: the test slice by weight, the decision, the rest with the winner."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Engine, insert, select
from test_pipeline import AS_OF, add_customers, make_spec, settings, sink  # noqa: F401

from lifecycle.core import variants
from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import Settings
from lifecycle.devtools.sink.thread import SinkHandle
from lifecycle.run.deliver import deliver
from lifecycle.run.experiment import decide
from lifecycle.run.plan import PlanResult, plan
from lifecycle.store import schema


def later() -> datetime:
    """After the test sends' opens (sends are stamped with the real clock)."""
    return datetime.now(UTC) + timedelta(hours=1)


def experiment_spec(**experiment: Any) -> CampaignSpec:
    return make_spec(
        variants=[
            {"id": "a", "weight": 50, "subject": "A {{ first_name }}"},
            {"id": "b", "weight": 50, "subject": "B {{ first_name }}"},
        ],
        experiment={
            "test_percent": 40,
            "wait_hours": 2,
            "metric": "unique_opens",
            "significance": 0.05,
            "fallback": "a",
            **experiment,
        },
    )


def send(engine: Engine, spec: CampaignSpec, settings: Settings, result: PlanResult) -> None:  # noqa: F811
    for number, batch in enumerate(result.batches):
        deliver(engine, spec, settings, run_id=result.run_id, batch=batch, attempt=f"t{number}")


def sent_rows(engine: Engine) -> list[Any]:
    ledger = schema.send_ledger
    with engine.connect() as conn:
        return list(conn.execute(select(ledger).where(ledger.c.status == "sent")))


def open_events(engine: Engine, rows: list[Any], share: dict[str, float]) -> None:
    """An open for the first `share[variant]` of each variant's sends."""
    by_variant: dict[str, list[Any]] = {}
    for row in rows:
        by_variant.setdefault(row.variant, []).append(row)
    events = []
    for variant, sends in by_variant.items():
        for row in sends[: round(len(sends) * share[variant])]:
            events.append(
                {
                    "natural_key": f"open-{row.id}",
                    "event": "open",
                    "occurred_at": row.sent_at + timedelta(minutes=30),
                    "send_id": row.id,
                    "campaign_id": row.campaign_id,
                    "received_at": row.sent_at + timedelta(minutes=30),
                }
            )
    with engine.begin() as conn:
        conn.execute(insert(schema.engagement_events), events)


def run_test_slice(engine: Engine, spec: CampaignSpec, settings: Settings) -> PlanResult:  # noqa: F811
    result = plan(engine, spec, settings, run_key="exp", as_of=AS_OF, phase="test")
    send(engine, spec, settings, result)
    return result


@pytest.mark.parametrize(
    ("share", "winner", "chosen_by", "reason"),
    [
        ({"a": 0.2, "b": 0.8}, "b", "significant", "significant at 0.05"),
        ({"a": 0.3, "b": 0.35}, "a", "fallback", "not significant"),
        ({"a": 1.0, "b": 1.0}, "a", "fallback", "tie"),
    ],
)
def test_the_rest_gets_the_significant_winner_or_the_fallback(
    engine: Engine,
    settings: Settings,  # noqa: F811
    sink: SinkHandle,  # noqa: F811
    share: dict[str, float],
    winner: str,
    chosen_by: str,
    reason: str,
) -> None:
    ids = add_customers(engine, 400)
    spec = experiment_spec()
    tested = run_test_slice(engine, spec, settings)
    in_test = variants.in_test_slice(pd.Series(ids), spec)
    first = sent_rows(engine)
    assert {row.customer_id for row in first} == {i for i, t in zip(ids, in_test, strict=True) if t}
    assert set(Counter(row.variant for row in first)) == {"a", "b"}

    open_events(engine, first, share)
    decision = decide(engine, spec, settings, run_id=tested.run_id, now=later())
    assert (decision.winner, decision.chosen_by) == (winner, chosen_by)
    assert reason in decision.reason
    assert decision.figures == {
        v: {"sent": n, "unique_opens": round(n * share[v])}
        for v, n in Counter(row.variant for row in first).items()
    }

    rest = plan(engine, spec, settings, run_key="exp", as_of=AS_OF, phase="rest", winner=winner)
    assert rest.run_id == tested.run_id
    send(engine, spec, settings, rest)
    everyone = sent_rows(engine)
    assert sorted(row.customer_id for row in everyone) == ids  # one email each, nobody twice
    assert Counter(sink.state.send_ids()).most_common(1)[0][1] == 1
    rest_rows = [row for row in everyone if row.id not in {r.id for r in first}]
    assert rest_rows and {row.variant for row in rest_rows} == {winner}

    with engine.connect() as conn:
        stored = conn.execute(
            select(schema.campaign_runs.c.experiment).where(
                schema.campaign_runs.c.id == tested.run_id
            )
        ).scalar_one()
    assert stored == decision.to_dict()


def test_a_retried_decision_keeps_the_first_winner(
    engine: Engine,
    settings: Settings,  # noqa: F811
    sink: SinkHandle,  # noqa: F811
) -> None:
    add_customers(engine, 300)
    spec = experiment_spec()
    tested = run_test_slice(engine, spec, settings)
    first = decide(engine, spec, settings, run_id=tested.run_id, now=later())
    assert first.chosen_by == "fallback"  # no opens yet
    open_events(engine, sent_rows(engine), {"a": 0.0, "b": 1.0})
    again = decide(engine, spec, settings, run_id=tested.run_id, now=later())
    assert again == first


def test_only_the_rest_is_planned_with_a_winner(
    engine: Engine,
    settings: Settings,  # noqa: F811
) -> None:
    spec = experiment_spec()
    with pytest.raises(ValueError, match="winner"):
        plan(engine, spec, settings, run_key="x", as_of=AS_OF, phase="test", winner="b")
    with pytest.raises(ValueError, match="winner"):
        plan(engine, spec, settings, run_key="x", as_of=AS_OF, phase="rest")
