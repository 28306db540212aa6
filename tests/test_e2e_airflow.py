"""End to end: a real `airflow standalone` (own AIRFLOW_HOME, SQLite, loopback, free port) runs
a campaign triggered through the REST API, against a seeded warehouse and the local sink."""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import pytest
import sqlalchemy as sa
from processes import still_running

from lifecycle.core import features
from lifecycle.core.config import load_settings
from lifecycle.devtools import seed
from lifecycle.devtools.sink.thread import run_sink_in_thread
from lifecycle.devtools.standalone import Standalone, start_standalone
from lifecycle.store import schema, warehouse

pytestmark = pytest.mark.slow

AS_OF = datetime(2026, 11, 24, 11, 0, tzinfo=UTC)
API_KEY = "SG.e2e-key"
DAG_ID = "campaign_loyalty"
DRAFT = "loyalty_draft"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def family(pid: int) -> set[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return {root, *root.children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def wait_for_run(
    api: httpx.Client, run_id: str, airflow: Standalone, seen: set, dag_id: str = DAG_ID
) -> str:
    state, deadline = "queued", time.monotonic() + 300
    while state not in ("success", "failed") and time.monotonic() < deadline:
        time.sleep(2)
        seen |= family(airflow.process.pid)
        state = api.get(f"/dags/{dag_id}/dagRuns/{run_id}").raise_for_status().json()["state"]
    return state


def wait_for_asset_run_at(api: httpx.Client, engine: sa.Engine, as_of: datetime) -> list:
    """Wait for a successful asset-triggered campaign run at `as_of`; every asset-triggered
    run's as-of (unpausing customer_features also starts its latest scheduled run)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        runs = api.get(f"/dags/{DAG_ID}/dagRuns").raise_for_status().json()["dag_runs"]
        done = [
            r["dag_run_id"]
            for r in runs
            if r["run_type"] == "asset_triggered" and r["state"] == "success"
        ]
        seen = [run_as_of(engine, run_id) for run_id in done]
        if as_of in seen:
            return seen
        time.sleep(2)
    raise AssertionError(f"no asset-triggered run at {as_of} within 180 s")


def finished_asset_runs(api: httpx.Client, dag_id: str) -> list[dict]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        runs = api.get(f"/dags/{dag_id}/dagRuns").raise_for_status().json()["dag_runs"]
        triggered = [r for r in runs if r["run_type"] == "asset_triggered"]
        if triggered and all(r["state"] in ("success", "failed") for r in triggered):
            return triggered
        time.sleep(2)
    return []


def draft_rows(engine: sa.Engine) -> tuple[int, int]:
    """The draft's campaign runs and ledger rows."""
    runs, ledger = schema.campaign_runs, schema.send_ledger
    with engine.connect() as conn:
        count = sa.select(sa.func.count())
        return (
            conn.execute(count.where(runs.c.campaign_id == DRAFT)).scalar_one(),
            conn.execute(count.where(ledger.c.campaign_id == DRAFT)).scalar_one(),
        )


def run_as_of(engine: sa.Engine, run_key: str) -> datetime:
    runs = schema.campaign_runs
    with engine.connect() as conn:
        return conn.execute(sa.select(runs.c.as_of).where(runs.c.run_key == run_key)).scalar_one()


def sent_rows(engine: sa.Engine) -> list[dict]:
    ledger = schema.send_ledger
    query = sa.select(ledger).where(ledger.c.campaign_id == "loyalty", ledger.c.status == "sent")
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def run_counts(engine: sa.Engine, run_key: str) -> dict:
    runs = schema.campaign_runs
    with engine.connect() as conn:
        return conn.execute(sa.select(runs.c.counts).where(runs.c.run_key == run_key)).scalar_one()


def with_a_draft(folder: Path) -> Path:
    """The shipped specs plus `loyalty_draft`: loyalty without its `status: live`, a draft."""
    shutil.copytree(load_settings().campaigns_dir, folder)
    text = (folder / "loyalty.yaml").read_text(encoding="utf-8")
    text = re.sub(r"(?m)^status: live.*\n", "", text).replace("id: loyalty\n", f"id: {DRAFT}\n")
    (folder / f"{DRAFT}.yaml").write_text(text, encoding="utf-8")
    return folder


def task_states(api: httpx.Client, dag_id: str, run_id: str) -> dict[str, str]:
    listed = api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").raise_for_status().json()
    return {ti["task_id"]: ti["state"] for ti in listed["task_instances"]}


def test_trigger_a_campaign_through_the_rest_api(tmp_path: Path, sqlite_url: str) -> None:
    engine = warehouse.make_engine(sqlite_url)
    seed.seed(engine, 400, seed=11, as_of=AS_OF)
    features.materialize(engine, AS_OF, load_settings(warehouse_url=sqlite_url))
    seen: set[psutil.Process] = set()
    with run_sink_in_thread(api_keys=[API_KEY]) as sink:
        airflow = start_standalone(
            tmp_path / "airflow",
            free_port(),
            env={
                "LIFECYCLE_HOME": str(tmp_path / "home"),
                "LIFECYCLE_UNSUBSCRIBE_SECRET": "e2e-secret",
                "LIFECYCLE_CELERY_QUEUE": "lifecycle_env",  # the Variable below wins
                "LIFECYCLE_CAMPAIGNS_DIR": str(with_a_draft(tmp_path / "campaigns")),
                # A sqlite:////absolute/path URI: lifecycle.airflow.connections makes it a URL.
                "AIRFLOW_CONN_LIFECYCLE_WAREHOUSE": sqlite_url,
                "AIRFLOW_CONN_SENDGRID_DEFAULT": json.dumps(
                    {"conn_type": "generic", "password": API_KEY, "host": sink.url}
                ),
            },
        )
        try:
            airflow.wait_healthy(timeout=400)
            api = httpx.Client(
                base_url=f"{airflow.url}/api/v2",
                headers={"Authorization": f"Bearer {airflow.api_token()}"},
                timeout=30,
            )
            deadline = time.monotonic() + 120
            while api.get(f"/dags/{DAG_ID}").status_code != 200:
                assert time.monotonic() < deadline, airflow.log_tail()
                time.sleep(2)

            # A marketer's typo is refused before any run exists, naming the field.
            bad = api.post(
                f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": {"limit": 0}}
            )
            assert bad.status_code == 400, bad.text
            assert "limit" in bad.text
            assert api.get(f"/dags/{DAG_ID}/dagRuns").json()["total_entries"] == 0

            api.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).raise_for_status()
            # The default queue, read by the cluster policy inside the scheduler's and the API
            # server's transactions (lifecycle/airflow/policy.py): the run's every task instance.
            variable = {"key": "lifecycle_celery_queue", "value": "lifecycle_e2e"}
            api.post("/variables", json=variable).raise_for_status()
            conf = {"as_of": AS_OF.isoformat()}
            first = api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf})
            first_id = first.raise_for_status().json()["dag_run_id"]
            assert wait_for_run(api, first_id, airflow, seen) == "success", airflow.log_tail()
            listed = api.get(f"/dags/{DAG_ID}/dagRuns/{first_id}/taskInstances").json()
            placed = {(t["task_id"], t["map_index"]): t["queue"] for t in listed["task_instances"]}
            assert set(placed.values()) == {"lifecycle_e2e"}, placed
            assert any(task == "deliver" and index >= 0 for task, index in placed), placed

            sent = sent_rows(engine)
            received = sink.state.snapshot()
            assert sent, "the seeded population has loyalty tier-ups at this as-of"
            assert sorted(int(m["custom_args"]["send_id"]) for m in received) == sorted(
                r["id"] for r in sent
            )
            assert {to for m in received for to in m["to"]} == {r["email"] for r in sent}
            assert run_counts(engine, first_id)["sent"] == len(sent)

            # The same as-of again: a new run, nothing new sent.
            again = api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf})
            again_id = again.raise_for_status().json()["dag_run_id"]
            assert wait_for_run(api, again_id, airflow, seen) == "success", airflow.log_tail()
            assert len(sink.state.snapshot()) == len(received)
            assert run_counts(engine, again_id)["sent"] == 0

            # A draft: triggered without a dry run it fails, planning and sending nothing.
            draft_dag = f"campaign_{DRAFT}"
            assert api.get(f"/dags/{draft_dag}").json()["dag_display_name"].endswith("(draft)")
            api.patch(f"/dags/{draft_dag}", json={"is_paused": False}).raise_for_status()
            real = api.post(f"/dags/{draft_dag}/dagRuns", json={"logical_date": None, "conf": conf})
            real_id = real.raise_for_status().json()["dag_run_id"]
            assert wait_for_run(api, real_id, airflow, seen, draft_dag) == "failed"
            states = task_states(api, draft_dag, real_id)
            assert states["check_status"] == states["plan"] == "skipped"
            assert states["finalize"] == "failed"

            # Data-aware: a fresh features snapshot triggers the campaign at the snapshot's as-of.
            later = AS_OF + timedelta(hours=1)
            api.patch("/dags/customer_features", json={"is_paused": False}).raise_for_status()
            snapshot = api.post(
                "/dags/customer_features/dagRuns",
                json={"logical_date": None, "conf": {"as_of": later.isoformat()}},
            )
            snapshot_id = snapshot.raise_for_status().json()["dag_run_id"]
            assert wait_for_run(api, snapshot_id, airflow, seen, "customer_features") == "success"
            as_ofs = wait_for_asset_run_at(api, engine, later)
            # The other snapshot (if any) is the scheduled one, at a whole hour.
            assert all(t == later or t.minute == t.second == 0 for t in as_ofs), as_ofs
            # The draft's own asset-triggered runs: green, every task skipped, nothing planned.
            for run in finished_asset_runs(api, draft_dag):
                assert run["state"] == "success"
                states = task_states(api, draft_dag, run["dag_run_id"])
                assert set(states.values()) == {"skipped"}, states
            assert finished_asset_runs(api, draft_dag), "the snapshot triggers the draft too"
            assert draft_rows(engine) == (0, 0)
            assert not [m for m in sink.state.snapshot() if m["custom_args"]["campaign"] == DRAFT]
            seen |= family(airflow.process.pid)
        finally:
            airflow.stop()
    engine.dispose()
    assert len(seen) >= 4
    assert still_running(seen) == []
    assert airflow.processes() == set()
