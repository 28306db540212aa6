"""`make airflow` / `start_standalone()`: a real `airflow standalone` that runs a task and stops
without leaving a single process behind."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest
from processes import still_running

from lifecycle.core.config import PROJECT_ROOT
from lifecycle.devtools.standalone import start_standalone

pytestmark = pytest.mark.slow

DAG = """
from airflow.sdk import dag, task


@dag(dag_id="standalone_probe", schedule=None)
def standalone_probe():
    @task
    def hello() -> int:
        return 42

    hello()


standalone_probe()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def family(pid: int) -> set[psutil.Process]:
    """The process and all its descendants, including those in their own process groups."""
    root = psutil.Process(pid)
    return {root, *root.children(recursive=True)}


def test_start_standalone_runs_a_task_on_another_port_and_stops_everything(tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "probe.py").write_text(textwrap.dedent(DAG))
    airflow = start_standalone(
        tmp_path / "airflow", free_port(), env={"AIRFLOW__CORE__DAGS_FOLDER": str(dags)}
    )
    seen: set[psutil.Process] = set()
    try:
        airflow.wait_healthy(timeout=240)
        api = httpx.Client(
            base_url=f"{airflow.url}/api/v2",
            headers={"Authorization": f"Bearer {airflow.api_token()}"},
            timeout=30,
        )
        dag_ids: list[str] = []
        deadline = time.monotonic() + 90
        while "standalone_probe" not in dag_ids and time.monotonic() < deadline:
            time.sleep(2)
            dag_ids = [d["dag_id"] for d in api.get("/dags").raise_for_status().json()["dags"]]
        assert dag_ids == ["standalone_probe"], airflow.log_tail()

        api.patch("/dags/standalone_probe", json={"is_paused": False}).raise_for_status()
        run = api.post("/dags/standalone_probe/dagRuns", json={"logical_date": None})
        run_id = run.raise_for_status().json()["dag_run_id"]
        state = "queued"
        deadline = time.monotonic() + 120
        while state not in ("success", "failed") and time.monotonic() < deadline:
            time.sleep(2)
            seen |= family(airflow.process.pid)
            state = api.get(f"/dags/standalone_probe/dagRuns/{run_id}").json()["state"]
        # The task reached the execution API on this port, not the default 8080.
        assert state == "success", airflow.log_tail()
        seen |= family(airflow.process.pid)
        assert len(seen) >= 4  # standalone, scheduler, dag-processor, api-server, triggerer...
    finally:
        airflow.stop()
    assert still_running(seen) == []
    assert airflow.processes() == set()


# SIGINT is what Ctrl-C delivers to the foreground process; SIGTERM is what `kill` sends.
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "term"])
def test_make_airflow_shows_the_login_and_a_signal_stops_everything(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    port = free_port()
    log = tmp_path / "make-airflow.log"
    with log.open("w") as out:
        main = subprocess.Popen(
            [sys.executable, "-m", "lifecycle.devtools.standalone", "--port", str(port)],
            cwd=PROJECT_ROOT,
            env={**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow")},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    seen: set[psutil.Process] = set()
    try:
        banner = wait_for_line(log, "Airflow is up:", main, timeout=240)
        assert f"http://127.0.0.1:{port}" in banner
        password = banner.split("password:")[1].strip()
        seen = family(main.pid)
        token = f"http://127.0.0.1:{port}/auth/token"
        login = httpx.post(token, json={"username": "admin", "password": password}, timeout=30)
        assert login.status_code == 201
        wrong = httpx.post(token, json={"username": "admin", "password": "x" + password})
        assert wrong.status_code == 401

        main.send_signal(stop_signal)
        assert main.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if main.poll() is None:
            main.kill()
            main.wait()
        leftovers = still_running(seen)
        kill_all(seen)
    assert len(seen) >= 4
    assert leftovers == []


def wait_for_line(log: Path, marker: str, process: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if marker in line:
                return line
        assert process.poll() is None, log.read_text()[-3000:]
        time.sleep(1)
    raise AssertionError(f"no {marker!r} after {timeout}s:\n{log.read_text()[-3000:]}")


def kill_all(processes: set[psutil.Process]) -> None:
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
