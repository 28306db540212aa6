"""The privacy_request DAG run for real with `dag.test()`: an export to a file, then an erasure."""

from __future__ import annotations

import importlib.util
import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from lifecycle.core import addresses
from lifecycle.core.config import PROJECT_ROOT
from lifecycle.store import warehouse
from lifecycle.store.schema import coupons, customers, send_ledger, suppressions

AS_OF = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def load_dag():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "privacy_request_dag", PROJECT_ROOT / "dags" / "privacy_request.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.privacy_request


def returned(run_id: str) -> dict:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        value = (
            session.query(XComModel)
            .filter_by(
                dag_id="privacy_request", run_id=run_id, task_id="answer", key="return_value"
            )
            .one()
            .value
        )
    return json.loads(value) if isinstance(value, str) else value


def test_export_then_erase_from_the_dag(
    airflow_db: Path, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = warehouse.make_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(
            insert(customers),
            {"id": 4, "email": "Ann@Example.am", "signup_at": AS_OF, "marketing_consent": True},
        )
        ledger_row = {"campaign_id": "c", "occurrence_key": "k", "customer_id": 4, "run_id": 1}
        conn.execute(
            insert(send_ledger),
            {
                **ledger_row,
                "status": "sent",
                "template": "t",
                "email": "ann@example.am",
                "planned_at": AS_OF,
            },
        )
        conn.execute(
            insert(coupons),
            {
                "code": "C-1",
                "campaign_id": "c",
                "customer_id": 4,
                "occurrence_key": "k",
                "discount_percent": 10,
                "issued_at": AS_OF,
                "expires_at": AS_OF,
            },
        )
    monkeypatch.setenv(
        "AIRFLOW_CONN_LIFECYCLE_WAREHOUSE",
        json.dumps({"conn_type": "generic", "extra": {"sqlalchemy_url": sqlite_url}}),
    )
    monkeypatch.setenv("LIFECYCLE_HOME", str(tmp_path / "home"))
    dag = load_dag()

    exported = dag.test(run_conf={"email": " ANN@example.am", "action": "export"})
    assert str(exported.state) == "success"
    answer = returned(exported.run_id)
    path = Path(answer["path"])
    assert path.parent == tmp_path / "home" / "privacy_exports"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    held = json.loads(path.read_text())
    assert held["customer_ids"] == [4] and answer["rows"]["coupons"] == 1
    assert "ann@example.am" not in json.dumps(answer)

    erased = dag.test(run_conf={"email": "ann@example.am", "action": "erase"})
    assert str(erased.state) == "success"
    assert returned(erased.run_id)["changed"]["coupons"] == 1
    with engine.connect() as conn:
        assert conn.execute(select(send_ledger.c.email)).scalar_one() is None
        assert conn.execute(select(coupons)).all() == []
        assert conn.execute(select(suppressions.c.email)).scalars().all() == [
            addresses.hashed("ann@example.am")
        ]
    engine.dispose()


def test_on_many_hosts_an_export_goes_to_the_shared_directory_or_nowhere(
    airflow_db: Path,
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Under a non-local executor an export on one worker's disk would be out of reach."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_LIFECYCLE_WAREHOUSE",
        json.dumps({"conn_type": "generic", "extra": {"sqlalchemy_url": sqlite_url}}),
    )
    monkeypatch.setenv("LIFECYCLE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")  # what tasks read at run time
    monkeypatch.delenv("LIFECYCLE_SHARED_DIR", raising=False)
    dag = load_dag()
    request = {"email": "ann@example.am", "action": "export"}

    refused = dag.test(run_conf=request)
    assert str(refused.state) == "failed"
    logged = "".join(capsys.readouterr())  # the task log, as the task runner prints it
    assert "set LIFECYCLE_SHARED_DIR to a directory every worker mounts: CeleryExecutor" in logged
    assert not (tmp_path / "home" / "privacy_exports").exists()

    monkeypatch.setenv("LIFECYCLE_SHARED_DIR", str(tmp_path / "shared"))
    exported = dag.test(run_conf=request)
    assert str(exported.state) == "success"
    assert Path(returned(exported.run_id)["path"]).parent == tmp_path / "shared" / "privacy_exports"
