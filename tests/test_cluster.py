"""`lifecycle.devtools.cluster` piece by piece, against the real Redis, PostgreSQL and Airflow
configuration (the whole cluster runs in tests/test_celery_airflow.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
import redis
import sqlalchemy as sa

from lifecycle.devtools import cluster, hostname
from lifecycle.devtools.cluster import CLAIM_KEY, Cluster, Component
from lifecycle.devtools.deployment import free_port

REDIS_URL = cluster.REDIS_URL


def claim_holder(n: int) -> bytes | None:
    with redis.Redis.from_url(REDIS_URL, db=0) as client:
        value = client.get(CLAIM_KEY.format(n=n))
        return value if isinstance(value, bytes) else None


def test_parallel_claims_get_distinct_databases_until_released() -> None:
    with ThreadPoolExecutor(4) as pool:
        claims = list(pool.map(lambda _: cluster.claim_redis_db(), range(4)))
    try:
        assert len({c.db for c in claims}) == 4
        assert all(1 <= c.db <= 15 for c in claims)
        assert all(claim_holder(c.db) == c.token.encode() for c in claims)
        another = cluster.claim_redis_db()
        assert another.db not in {c.db for c in claims}
        another.release()
    finally:
        for claim in claims:
            claim.release()
    assert [claim_holder(c.db) for c in claims] == [None] * 4


def test_release_flushes_its_database_and_leaves_a_foreign_claim_alone() -> None:
    claim = cluster.claim_redis_db()
    with redis.Redis.from_url(claim.broker_url) as db:
        db.set("celery-queue", "a task message")
        claim.release()
        assert db.dbsize() == 0
    assert claim_holder(claim.db) is None

    # A claim that expired and was taken over is the new holder's: the old one cannot drop it.
    stale = cluster.claim_redis_db(ttl=1)
    time.sleep(2.5)
    fresh = cluster.claim_redis_db()
    try:
        assert fresh.db == stale.db  # the expired claim's database is free again, and taken
        with redis.Redis.from_url(fresh.broker_url) as db:
            db.set("fresh-queue", "x")
            stale.release()
            assert db.get("fresh-queue") == b"x"
        assert claim_holder(fresh.db) == fresh.token.encode()
    finally:
        fresh.release()


def test_a_dead_clusters_leftovers_are_flushed_when_its_database_is_claimed_again() -> None:
    dead = cluster.claim_redis_db(ttl=1)
    with redis.Redis.from_url(dead.broker_url) as db:
        db.set("unacked", "a dead cluster's message")
    time.sleep(2.5)
    again = cluster.claim_redis_db()
    try:
        with redis.Redis.from_url(again.broker_url) as db:
            assert again.db == dead.db and db.dbsize() == 0
    finally:
        again.release()


def airflow_reads(env: dict[str, str], options: list[tuple[str, str]]) -> dict[str, str]:
    """What Airflow's own configuration returns for `options` under `env` (a fresh process)."""
    code = textwrap.dedent(
        f"""
        import json
        from airflow.configuration import conf
        from airflow.sdk.api.client import get_hostname
        values = {{f"{{s}}.{{o}}": conf.get(s, o) for s, o in {options!r}}}
        values["hostname"] = get_hostname()
        print(json.dumps(values))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_airflow_reads_the_generated_settings_and_each_worker_names_itself(
    tmp_path: Path,
) -> None:
    metadata = "postgresql+psycopg://postgres@127.0.0.1:5432/airflow_cluster_x"
    env = cluster.cluster_env(tmp_path, 8123, metadata, "redis://127.0.0.1:6379/7")
    options = [
        ("core", "executor"),
        ("database", "sql_alchemy_conn"),
        ("celery", "broker_url"),
        ("celery", "result_backend"),
        ("scheduler", "task_instance_heartbeat_timeout"),
        ("core", "execution_api_server_url"),
    ]
    read = airflow_reads({**env, hostname.VARIABLE: "worker-7"}, options)
    assert read["core.executor"] == "CeleryExecutor"
    assert read["celery.broker_url"] == "redis://127.0.0.1:6379/7"
    # Results in the metadata database, through SQLAlchemy (db+), psycopg2 for Airflow itself.
    assert read["celery.result_backend"].startswith("db+postgresql://")
    assert read["celery.result_backend"].endswith("/airflow_cluster_x")
    assert sa.make_url(read["database.sql_alchemy_conn"]).database == "airflow_cluster_x"
    assert int(read["scheduler.task_instance_heartbeat_timeout"]) < 300  # Airflow's default
    assert read["core.execution_api_server_url"] == "http://127.0.0.1:8123/execution/"
    assert read["hostname"] == "worker-7"  # the name a task instance records
    # Each cluster signs its own tokens.
    other = cluster.cluster_env(tmp_path, 8123, metadata, "redis://127.0.0.1:6379/7")
    assert other["AIRFLOW__API_AUTH__JWT_SECRET"] != env["AIRFLOW__API_AUTH__JWT_SECRET"]


def test_without_the_variable_the_hostname_is_the_machines(tmp_path: Path) -> None:
    env = cluster.cluster_env(tmp_path, 8123, "postgresql://x@127.0.0.1/y", "redis://h:1/2")
    clean = {k: v for k, v in os.environ.items() if k != hostname.VARIABLE}
    code = "from airflow.sdk.api.client import get_hostname; print(get_hostname())"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert result.stdout.strip().splitlines()[-1] == socket.getfqdn()


# A worker-like tree: a process in its own session whose child moves to its own process group,
# as Airflow's task processes do; the grandchild writes its pid to a file.
TREE = """
import os, subprocess, sys, time
child = subprocess.Popen(
    [sys.executable, "-c", "import os, time; "
     "open(os.environ['PIDS'], 'a').write(f'{os.getpid()}\\\\n'); time.sleep(600)"],
    process_group=0,
)
open(os.environ["PIDS"], "a").write(f"{os.getpid()}\\n")
time.sleep(600)
"""


def worker_tree(tmp_path: Path, name: str) -> tuple[Component, Path]:
    pids = tmp_path / f"{name}.pids"
    process = subprocess.Popen(
        [sys.executable, "-c", TREE],
        env={**os.environ, "PIDS": str(pids)},
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while len(pids.read_text().split() if pids.exists() else []) < 2:
        assert time.monotonic() < deadline, "the process tree did not start"
        time.sleep(0.1)
    return Component(name, process, tmp_path / f"{name}.log"), pids


def test_kill_worker_kills_its_task_processes_too_and_stop_undoes_everything(
    tmp_path: Path,
) -> None:
    claim = cluster.claim_redis_db()
    database = cluster.create_database()
    running = Cluster(tmp_path, 0, {}, database, claim, workers=2)
    try:
        for i in range(2):
            component, _ = worker_tree(tmp_path, Cluster.worker_hostname(i))
            running.components[component.name] = component
        victim = running.components["worker-1"]
        tree = {int(p) for p in (tmp_path / "worker-1.pids").read_text().split()}
        # The task-like process left the worker's process group: a group kill would miss it.
        assert any(os.getpgid(pid) != victim.process.pid for pid in tree)

        killed = running.kill_worker(1)
        assert tree <= killed
        assert not any(psutil.pid_exists(pid) and _alive(pid) for pid in tree)
        assert victim.process.returncode == -9
        assert running.components["worker-0"].process.poll() is None  # the other one runs
    finally:
        running.stop(grace=5)
    survivors = {int(p) for p in (tmp_path / "worker-0.pids").read_text().split()}
    assert not any(psutil.pid_exists(pid) and _alive(pid) for pid in survivors)
    assert claim_holder(claim.db) != claim.token.encode()
    admin = sa.create_engine(cluster.PG_ADMIN_URL)
    with admin.connect() as conn:
        name = sa.make_url(database).database
        found = conn.execute(
            sa.text("SELECT count(*) FROM pg_database WHERE datname = :n"), {"n": name}
        )
        assert found.scalar_one() == 0
    admin.dispose()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("argv", [["--help"]])
def test_the_cluster_command_explains_itself(argv: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lifecycle.devtools.cluster", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    for words in ("CeleryExecutor", "--workers", "Redis", "PostgreSQL", "Ctrl-C"):
        assert words in result.stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_make_cluster_shows_the_login_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "make-cluster.log"
    command = [sys.executable, "-m", "lifecycle.devtools.cluster", "--workers", "1"]
    command += ["--port", str(port), "--home", str(tmp_path / "airflow")]
    with log.open("w") as out:
        main = subprocess.Popen(
            command,
            env=os.environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    seen: set[psutil.Process] = set()
    try:
        deadline = time.monotonic() + 600
        while "Airflow (CeleryExecutor) is up:" not in log.read_text():
            assert main.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            seen |= {psutil.Process(main.pid), *psutil.Process(main.pid).children(recursive=True)}
            time.sleep(1)
        text = log.read_text()
        password = text.split("password: ")[1].split()[0]
        token = f"http://127.0.0.1:{port}/auth/token"
        login = httpx.post(token, json={"username": "admin", "password": password}, timeout=60)
        assert login.status_code == 201
        workers = psutil.Process(main.pid).children(recursive=True)
        seen |= set(workers)
        assert any("celery" in " ".join(p.cmdline()) for p in workers)

        main.send_signal(signal.SIGINT)
        assert main.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if main.poll() is None:
            main.kill()
            main.wait()
    alive = [p.pid for p in seen if p.pid != main.pid and _alive(p.pid)]
    assert alive == []
    database = text.split("; metadata database ")[1].split(";")[0]
    admin = sa.create_engine(cluster.PG_ADMIN_URL)
    with admin.connect() as conn:
        left = conn.execute(sa.text("SELECT datname FROM pg_database")).scalars().all()
    admin.dispose()
    assert "stopped" in log.read_text()
    assert database.startswith("airflow_cluster_") and database not in left
