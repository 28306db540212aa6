"""The retention_report DAG run for real with `dag.test()` on a warehouse reached through the
`lifecycle_warehouse` connection; its headline XCom matches the warehouse."""

from __future__ import annotations

import importlib.util
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from campaign_results import expected_figures, fill_campaign_results

from lifecycle.core.config import PROJECT_ROOT
from lifecycle.store import warehouse


def load_dag():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "retention_report_dag", PROJECT_ROOT / "dags" / "retention_report.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.retention_report


def returned(dag_id: str, run_id: str) -> dict:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id=dag_id, run_id=run_id, task_id="report", key="return_value")
            .one()
        )
        value = row.value
    return json.loads(value) if isinstance(value, str) else value


def test_report_task_returns_the_headline_figures(
    airflow_db: Path, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = warehouse.make_engine(sqlite_url)
    fill_campaign_results(engine, datetime.now(UTC).replace(microsecond=0), customers=1_000)
    expected = expected_figures(engine)
    engine.dispose()
    monkeypatch.setenv(
        "AIRFLOW_CONN_LIFECYCLE_WAREHOUSE",
        json.dumps({"conn_type": "generic", "extra": {"sqlalchemy_url": sqlite_url}}),
    )
    # The connection wins over the environment.
    monkeypatch.setenv("LIFECYCLE_WAREHOUSE_URL", f"sqlite:///{tmp_path / 'not-this-one.db'}")

    run = load_dag().test()

    assert str(run.state) == "success"
    headline = returned("retention_report", run.run_id)
    assert headline["sent"] == expected["sent"]
    assert headline["campaigns"] == 3
    assert headline["simulated_events"] > 0
