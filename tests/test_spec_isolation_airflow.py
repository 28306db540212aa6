"""Spec isolation in a real `airflow standalone`: a spec broken while the campaigns are live
shows up as one clear import error, and another campaign still runs when triggered and keeps
its schedule."""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import pytest
from processes import still_running
from test_e2e_airflow import family, free_port, wait_for_run

from lifecycle.core import features
from lifecycle.core.config import load_settings
from lifecycle.devtools import seed
from lifecycle.devtools.sink.thread import run_sink_in_thread
from lifecycle.devtools.standalone import start_standalone
from lifecycle.store import warehouse

pytestmark = pytest.mark.slow

AS_OF = datetime(2026, 11, 24, 11, 0, tzinfo=UTC)
API_KEY = "SG.isolation-key"


def wait_until(check, what: str, airflow, timeout: float = 180):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what} within {timeout} s\n{airflow.log_tail()}"
        time.sleep(2)
    return found


def test_a_spec_broken_while_live_is_one_import_error_and_the_others_still_run(
    tmp_path: Path, sqlite_url: str
) -> None:
    campaigns = tmp_path / "campaigns"
    shutil.copytree(load_settings().campaigns_dir, campaigns)
    engine = warehouse.make_engine(sqlite_url)
    seed.seed(engine, 300, seed=11, as_of=AS_OF)
    features.materialize(engine, AS_OF, load_settings(warehouse_url=sqlite_url))
    seen: set[psutil.Process] = set()
    with run_sink_in_thread(api_keys=[API_KEY]) as sink:
        airflow = start_standalone(
            tmp_path / "airflow",
            free_port(),
            env={
                "LIFECYCLE_HOME": str(tmp_path / "home"),
                "LIFECYCLE_CAMPAIGNS_DIR": str(campaigns),
                "LIFECYCLE_UNSUBSCRIBE_SECRET": "isolation-secret",
                "AIRFLOW_CONN_LIFECYCLE_WAREHOUSE": sqlite_url,
                "AIRFLOW_CONN_SENDGRID_DEFAULT": json.dumps(
                    {"conn_type": "sendgrid", "password": API_KEY, "host": sink.url}
                ),
                # Re-parse the (unchanged) DAG files soon after a spec changes.
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            },
        )
        try:
            airflow.wait_healthy(timeout=480)  # a shared 2-core machine can be slow
            api = httpx.Client(
                base_url=f"{airflow.url}/api/v2",
                headers={"Authorization": f"Bearer {airflow.api_token()}"},
                timeout=120,  # the API answers slowly while the machine is loaded
            )

            def dag(dag_id: str) -> dict | None:
                response = api.get(f"/dags/{dag_id}")
                return response.json() if response.status_code == 200 else None

            wait_until(lambda: dag("campaign_birthday"), "campaign_birthday listed", airflow)
            api.patch("/dags/campaign_loyalty", json={"is_paused": False}).raise_for_status()
            assert api.get("/importErrors").json()["total_entries"] == 0

            broken = campaigns / "birthday.yaml"
            broken.write_text(broken.read_text().replace("schedule:", "schedul:", 1))
            errors = wait_until(
                lambda: api.get("/importErrors").json()["import_errors"],
                "the broken spec's import error",
                airflow,
            )
            assert [Path(e["filename"]).name for e in errors] == ["campaign_specs.py"]
            trace = errors[0]["stack_trace"]
            assert f"{broken}: field 'schedul': unknown field (did you mean 'schedule'?)" in trace
            wait_until(
                lambda: (dag("campaign_birthday") or {}).get("is_stale", True),
                "campaign_birthday deactivated",
                airflow,
            )

            for dag_id in ("campaign_loyalty", "campaign_reengagement", "campaign_onboarding"):
                other = dag(dag_id)
                assert other is not None, dag_id
                assert not other["has_import_errors"] and not other["is_stale"], other
            # A cron campaign keeps its next scheduled run (loyalty waits for features).
            assert dag("campaign_reengagement")["next_dagrun_run_after"]  # type: ignore[index]
            run = api.post(
                "/dags/campaign_loyalty/dagRuns",
                json={"logical_date": None, "conf": {"as_of": AS_OF.isoformat()}},
            )
            run_id = run.raise_for_status().json()["dag_run_id"]
            state = wait_for_run(api, run_id, airflow, seen, "campaign_loyalty")
            assert state == "success", airflow.log_tail()
            seen |= family(airflow.process.pid)
        finally:
            airflow.stop()
    engine.dispose()
    assert still_running(seen) == []
