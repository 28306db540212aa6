"""The backported scheduler fix (lifecycle.airflow.scheduler_fix): the executor's report of the
worker that parked an approval (or deferred a task) does not fail the task once it has resumed.
tests/test_approval_airflow.py meets the race for real; here each case is set up on purpose."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from lifecycle.airflow import scheduler_fix
from lifecycle.core.config import PROJECT_ROOT

RESUMING = "execute_complete"
# task id: (state of the task instance, its try number, its method to resume, executor's report)
CASES: dict[str, tuple[str, int, str | None, str]] = {
    "resumed_and_queued": ("queued", 1, RESUMING, "success"),
    "resumed_and_running": ("running", 1, RESUMING, "success"),
    "killed_while_queued": ("queued", 1, None, "success"),  # a real mismatch: Airflow fails it
    "resumed_but_scheduled": ("scheduled", 1, RESUMING, "success"),  # Airflow handles this one
    "report_of_the_try_before": ("queued", 2, RESUMING, "success"),
    "worker_failed": ("queued", 1, RESUMING, "failed"),
    "finished": ("success", 1, None, "success"),
}
STALE = {"resumed_and_queued", "resumed_and_running"}


class Executor:
    def __init__(self, event_buffer: dict[Any, tuple[str, None]]) -> None:
        self.event_buffer = event_buffer


@pytest.fixture
def session(airflow_db: Path) -> Iterator[Any]:
    from airflow import settings
    from airflow.models.taskinstance import TaskInstance as TI

    run_id = f"manual__{uuid.uuid4().hex}"
    with settings.Session() as session:
        # Lone task instances: without their DAG, DAG version and run rows (not read here).
        session.execute(sa.text("PRAGMA foreign_keys=OFF"))
        for task_id, (state, try_number, next_method, _) in CASES.items():
            session.execute(
                sa.insert(TI.__table__).values(
                    id=uuid.uuid4(),
                    dag_id="campaign_fix",
                    task_id=task_id,
                    run_id=run_id,
                    map_index=-1,
                    pool="default_pool",
                    state=state,
                    try_number=try_number,
                    next_method=next_method,
                )
            )
        session.commit()
        session.info["run_id"] = run_id
        yield session
        session.execute(sa.delete(TI.__table__).where(TI.run_id == run_id))
        session.commit()


def test_only_the_report_of_the_try_that_parked_is_dropped(session: Any) -> None:
    from airflow.models.taskinstancekey import TaskInstanceKey

    keys = {
        task_id: TaskInstanceKey("campaign_fix", task_id, session.info["run_id"], 1, -1)
        for task_id in CASES
    }
    executor = Executor({keys[t]: (report, None) for t, (*_, report) in CASES.items()})

    dropped = scheduler_fix.drop_stale_successes(executor, session)

    assert {key.task_id for key in dropped} == STALE
    assert {key.task_id for key in executor.event_buffer} == set(CASES) - STALE


def test_every_airflow_process_patches_the_scheduler_once_it_is_imported(tmp_path: Path) -> None:
    """Through Airflow's own local-settings hook (plugins/airflow_local_settings.py), as the
    scheduler of `airflow standalone` or docker-compose loads it; other processes never import
    the scheduler for it. Fails too when Airflow is upgraded past what the fix was checked on."""
    probe = (
        "import json, sys, airflow\n"
        "before = 'airflow.jobs.scheduler_job_runner' in sys.modules\n"
        "from airflow.jobs.scheduler_job_runner import SchedulerJobRunner as R\n"
        "method = R.__dict__['process_executor_events'].__func__\n"
        "print(json.dumps([before, getattr(method, '_lifecycle_drops_stale_successes', False)]))\n"
    )
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    imported_before, patched = json.loads(done.stdout.strip().splitlines()[-1])
    assert not imported_before  # importing airflow alone does not load the scheduler
    assert patched, done.stderr
