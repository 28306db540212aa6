"""The warehouse connection dropped mid-plan and mid-record: PostgreSQL terminates the backend
(`pg_terminate_backend` from another connection) right before the ledger write, the phase
fails, Airflow's retry runs it again. No row is planned or sent twice, none is lost."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, event
from test_pipeline import AS_OF, KEY, add_customers, ledger_rows, make_spec, sink

from lifecycle.core.config import Settings, load_settings
from lifecycle.devtools.sink.thread import SinkHandle
from lifecycle.run.deliver import deliver
from lifecycle.run.finalize import finalize
from lifecycle.run.plan import plan

__all__ = ["sink"]  # the sink fixture of test_pipeline, used here

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    from lifecycle.store import warehouse

    engine = warehouse.make_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(pg_url: str, sink: SinkHandle, tmp_path: Path) -> Settings:
    return load_settings(
        home=tmp_path,
        warehouse_url=pg_url,
        transport="sendgrid",
        sendgrid_api_key=KEY,
        sendgrid_host=sink.url,
        unsubscribe_secret="faults-unsubscribe-secret",
    )


@contextmanager
def backend_terminated_before(engine: Engine, *fragments: str) -> Iterator[list[str]]:
    """Terminate this engine's server backend (from another connection) right before the first
    statement containing every fragment runs; yields the statements that were cut off."""
    killed: list[str] = []
    killer = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if killed or not all(f in statement for f in fragments):
            return
        pid = conn.connection.dbapi_connection.info.backend_pid
        with killer.connect() as other:
            other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        killed.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield killed
    finally:
        event.remove(engine, "before_cursor_execute", before)
        killer.dispose()


def test_connection_dropped_mid_plan_then_retried_plans_each_customer_once(
    pg_engine: Engine, settings: Settings, sink: SinkHandle
) -> None:
    ids = add_customers(pg_engine, 120)
    spec = make_spec()
    with (
        backend_terminated_before(pg_engine, "INSERT INTO", "send_ledger") as killed,
        pytest.raises(sa.exc.OperationalError),
    ):
        plan(pg_engine, spec, settings, run_key="fault-plan", as_of=AS_OF)
    assert killed, "the ledger write was never reached"
    planned = plan(pg_engine, spec, settings, run_key="fault-plan", as_of=AS_OF)  # the retry
    rows = ledger_rows(pg_engine)
    assert sorted(rows["customer_id"]) == ids  # every customer once: none lost, none twice
    assert planned.planned == len(ids)
    for batch in planned.batches:
        deliver(pg_engine, spec, settings, run_id=planned.run_id, batch=batch, attempt="a1")
    assert set(sink.state.send_ids().values()) == {1}
    assert len(sink.state.send_ids()) == len(ids)


def test_connection_dropped_mid_record_then_retried_sends_nobody_twice_and_loses_no_row(
    pg_engine: Engine, settings: Settings, sink: SinkHandle
) -> None:
    ids = add_customers(pg_engine, 120)
    spec = make_spec(delivery={"batch_size": 1000, "concurrency": 4})
    planned = plan(pg_engine, spec, settings, run_key="fault-record", as_of=AS_OF)
    (batch,) = planned.batches
    with (
        backend_terminated_before(pg_engine, "UPDATE send_ledger", "sent_at") as killed,
        pytest.raises(sa.exc.OperationalError),
    ):
        deliver(pg_engine, spec, settings, run_id=planned.run_id, batch=batch, attempt="try1")
    assert killed, "recording outcomes was never reached"
    deliver(pg_engine, spec, settings, run_id=planned.run_id, batch=batch, attempt="try2")
    counts = finalize(pg_engine, spec, run_id=planned.run_id).counts

    rows = ledger_rows(pg_engine).set_index("id")
    received = {int(k): n for k, n in sink.state.send_ids().items()}
    assert set(received.values()) == {1}  # nobody twice
    sent = set(rows.index[rows["status"] == "sent"])
    unknown = set(rows.index[rows["status"] == "unknown"])
    assert sent | unknown == set(rows.index) and len(rows) == len(ids)  # no row lost or stuck
    assert sent <= set(received) and set(received) <= sent | unknown
    assert counts["sent"] == len(sent) and counts["unknown"] == len(unknown)
