"""Test then send the winner in a real DAG run (`dag.test()` runs the deferred wait's trigger
inline): the test slice, a deferred wait while "customers" open the test emails, the
decision recorded on the run and as the pick_winner XCom, the rest sent with the winner."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from test_campaign_dag_runs import (
    AS_OF,
    SPECS,
    World,
    ledger_rows,
    make_world,
    run_row,
    task_states,
)

from lifecycle.airflow.campaign_dag import build_campaign_dag
from lifecycle.core import features
from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import load_settings
from lifecycle.store import dialect, schema

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_world(
    airflow_db: Path, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    with make_world(pg_url, tmp_path, monkeypatch) as made:
        features.materialize(made.engine, AS_OF, load_settings(warehouse_url=pg_url))
        yield made


def experiment_spec() -> CampaignSpec:
    raw = SPECS["reengagement"].model_dump(exclude={"variants", "experiment"})
    raw["variants"] = [
        {"id": "a", "weight": 50, "subject": "A {{ first_name }}"},
        {"id": "b", "weight": 50, "subject": "B {{ first_name }}"},
    ]
    raw["experiment"] = {
        "test_percent": 50,
        "wait_hours": 0.001,  # 3.6 s of deferred waiting
        "metric": "unique_opens",
        "fallback": "a",
    }
    return CampaignSpec.model_validate(raw)


@contextmanager
def customers_opening(engine: Engine, variants: set[str]) -> Iterator[None]:
    """Meanwhile, every sent email of `variants` is opened right after it is sent."""
    stop = threading.Event()
    ledger, events = schema.send_ledger, schema.engagement_events

    def open_them() -> None:
        while not stop.wait(0.2):
            with engine.begin() as conn:
                sent = conn.execute(
                    sa.select(ledger.c.id, ledger.c.sent_at, ledger.c.campaign_id).where(
                        ledger.c.status == "sent", ledger.c.variant.in_(variants)
                    )
                ).all()
                if sent:
                    rows = [
                        {
                            "natural_key": f"open-{row.id}",
                            "event": "open",
                            "occurred_at": row.sent_at + timedelta(milliseconds=1),
                            "send_id": row.id,
                            "campaign_id": row.campaign_id,
                            "received_at": row.sent_at + timedelta(milliseconds=1),
                        }
                        for row in sent
                    ]
                    statement = dialect.insert(conn, events).on_conflict_do_nothing(
                        index_elements=["natural_key"]
                    )
                    conn.execute(statement, rows)

    thread = threading.Thread(target=open_them, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@pytest.mark.parametrize(
    ("opened", "winner", "chosen_by"),
    [({"b"}, "b", "significant"), ({"a", "b"}, "a", "fallback")],  # b only; a tie at 100%
)
def test_the_winner_reaches_the_rest_after_a_deferred_wait(
    pg_world: World, opened: set[str], winner: str, chosen_by: str
) -> None:
    spec = experiment_spec()
    dag = build_campaign_dag(spec)
    assert type(dag.get_task("wait_for_results")).__name__ == "DateTimeSensorAsync"
    with customers_opening(pg_world.engine, opened):
        run = dag.test(run_conf={"as_of": AS_OF.isoformat()})
    states = task_states(dag.dag_id, run.run_id)
    assert str(run.state) == "success", states
    for name in ("tests_sent", "wait_for_results", "pick_winner", "plan_rest", "finalize"):
        assert states[name] == ["success"], (name, states)

    row = run_row(pg_world.engine, spec.id, run.run_id)
    decision = row["experiment"]
    assert (decision["winner"], decision["chosen_by"]) == (winner, chosen_by), decision
    assert decision["figures"]["a"]["sent"] >= 4 and decision["figures"]["b"]["sent"] >= 4
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        shown = (
            session.query(XComModel)
            .filter_by(
                dag_id=dag.dag_id, run_id=run.run_id, task_id="pick_winner", key="return_value"
            )
            .one()
            .value
        )
    assert (json.loads(shown) if isinstance(shown, str) else shown) == decision

    sent = ledger_rows(pg_world.engine, campaign_id=spec.id, status="sent")
    assert row["counts"]["sent"] == len(sent)
    tested = sum(f["sent"] for f in decision["figures"].values())
    rest = Counter(r["variant"] for r in sent)
    rest.subtract({v: f["sent"] for v, f in decision["figures"].items()})
    assert +rest and set(+rest) == {winner}  # everyone after the test got the winner
    assert len({r["customer_id"] for r in sent}) == len(sent) > tested
    received = Counter(m["custom_args"]["send_id"] for m in pg_world.sink.state.snapshot())
    assert set(received.values()) == {1}
