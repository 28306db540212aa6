"""`make cluster`: Airflow with the CeleryExecutor on this machine, one process per component.

An api-server, a scheduler, a dag-processor and N Celery workers (`airflow celery worker`),
each in its own session (so its own process group) with its own log under
`AIRFLOW_HOME/cluster-logs/`, and its own hostname: `[core] hostname_callable` is
`lifecycle.devtools.hostname.hostname`, which reads LIFECYCLE_HOSTNAME (`worker-0`,
`worker-1`, ...), so a task instance's `hostname` says which worker ran it; the Celery node is
`worker-0@<machine>`.

- Metadata: a fresh PostgreSQL database `airflow_cluster_<random>` on 127.0.0.1:5432 (also
  Celery's result backend, `db+postgresql://`), dropped at stop.
- Broker: Redis on 127.0.0.1:6379, in a database 1-15 claimed for this cluster alone: `SET
  lifecycle:cluster:redis-db:<n> <token> NX EX 300` in database 0, refreshed every 60 s while
  the cluster runs, flushed and released at stop. A claim that expired (its cluster died) is
  taken over and its database flushed.
- A killed worker's task is retried elsewhere within seconds: `[scheduler]
  task_instance_heartbeat_timeout` is 30 s here (300 by default), checked every 5 s. Celery
  does not redeliver it: Airflow's Celery provider acknowledges late (`task_acks_late`) and
  Redis redelivers an unacknowledged message only after its visibility timeout (24 h); the
  scheduler fails the silent try and Airflow's retry queues a new one, which the other worker
  takes.

`Cluster.kill_worker(i)` SIGKILLs every process of worker i's session (its Celery pool and the
task processes it started, which sit in process groups of their own), as a machine dying
would. `Cluster.stop()` terminates every component and waits for all of them, then drops the
database and releases the Redis database; tests call it in `finally`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis
import sqlalchemy as sa

from lifecycle.core.config import PROJECT_ROOT, load_settings
from lifecycle.devtools import deployment, hostname
from lifecycle.devtools.deployment import ADMIN_USER, DeploymentError, process_table

DEFAULT_PORT = 8080
REDIS_URL = os.environ.get("LIFECYCLE_CLUSTER_REDIS", "redis://127.0.0.1:6379")
PG_ADMIN_URL = os.environ.get(
    "LIFECYCLE_CLUSTER_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
CLAIM_KEY = "lifecycle:cluster:redis-db:{n}"
CLAIM_TTL_S = 300
CLAIM_REFRESH_S = 60
REDIS_DBS = range(1, 16)
HEARTBEAT_TIMEOUT_S = 30
READY = " ready."  # Celery's log line once a worker consumes its queues

# Compare-and-set on our token: a claim taken over after it expired is not ours to touch.
_REFRESH = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) else return 0 end"  # noqa: E501
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"  # noqa: E501


class ClusterError(DeploymentError):
    pass


@dataclass
class RedisClaim:
    """Database `db` of the Redis at `url`, claimed with `token` until `release()`."""

    url: str
    db: int
    token: str
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def broker_url(self) -> str:
        return f"{self.url}/{self.db}"

    def holds(self) -> bool:
        with _redis(self.url, 0) as client:
            return bool(client.get(CLAIM_KEY.format(n=self.db)) == self.token.encode())

    def keep_alive(self) -> None:
        """Refresh the claim every CLAIM_REFRESH_S seconds until released."""

        def refresh() -> None:
            while not self._stop.wait(CLAIM_REFRESH_S):
                with contextlib.suppress(redis.RedisError), _redis(self.url, 0) as client:
                    key = CLAIM_KEY.format(n=self.db)
                    client.eval(_REFRESH, 1, key, self.token, CLAIM_TTL_S)

        threading.Thread(target=refresh, name=f"redis-claim-{self.db}", daemon=True).start()

    def release(self) -> None:
        """Flush the database (the cluster's queues) and give it back, if still ours."""
        self._stop.set()
        with _redis(self.url, 0) as client:
            if self.holds():
                with _redis(self.url, self.db) as db:
                    db.flushdb()
            client.eval(_RELEASE, 1, CLAIM_KEY.format(n=self.db), self.token)


def claim_redis_db(url: str = REDIS_URL, ttl: int = CLAIM_TTL_S) -> RedisClaim:
    """Claim the first free database 1-15 (atomic SET NX in database 0); flush what a dead
    cluster left in it. Raises ClusterError when all 15 are taken."""
    token = uuid.uuid4().hex
    with _redis(url, 0) as client:
        for n in REDIS_DBS:
            if client.set(CLAIM_KEY.format(n=n), token, nx=True, ex=ttl):
                with _redis(url, n) as db:
                    db.flushdb()  # unclaimed: anything here is a dead cluster's queues
                return RedisClaim(url, n, token)
    raise ClusterError(f"every Redis database 1-15 at {url} is claimed by a running cluster")


@contextlib.contextmanager
def _redis(url: str, db: int) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url, db=db, socket_timeout=10)
    try:
        yield client
    finally:
        client.close()


def create_database(prefix: str = "airflow_cluster_", admin_url: str = PG_ADMIN_URL) -> str:
    """A new, empty PostgreSQL database; its URL (psycopg 3)."""
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))  # a name we generated
    finally:
        admin.dispose()
    return sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str, admin_url: str = PG_ADMIN_URL) -> None:
    name = sa.make_url(url).database
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def cluster_env(
    airflow_home: Path,
    port: int,
    metadata_url: str,
    broker_url: str,
    *,
    worker_concurrency: int = 4,
    parallelism: int = 8,
) -> dict[str, str]:
    """Every component's settings: the shared ones, CeleryExecutor, PostgreSQL metadata and
    results, the Redis broker, shared secrets (each process checks the others' tokens), and the
    quick detection of a dead worker's tasks."""
    pg = sa.make_url(metadata_url).set(drivername="postgresql+psycopg2")
    return {
        **deployment.airflow_env(airflow_home, port),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": hostname.CALLABLE,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg.render_as_string(hide_password=False),
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+"
        + pg.set(drivername="postgresql").render_as_string(hide_password=False),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(worker_concurrency),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__CORE__FERNET_KEY": _fernet_key(),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    }


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


@dataclass
class Component:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def session(self, table: dict[int, deployment.Proc] | None = None) -> set[int]:
        """Live processes of its session: it, its children, and the task processes they
        started in process groups of their own."""
        table = process_table() if table is None else table
        return {pid for pid, proc in table.items() if proc.session == self.process.pid}

    def tail(self, lines: int = 40) -> str:
        return deployment.tail(self.log_path, lines)


@dataclass
class Cluster:
    airflow_home: Path
    port: int
    env: dict[str, str]
    metadata_url: str
    claim: RedisClaim
    components: dict[str, Component] = field(default_factory=dict)
    workers: int = 0
    stopped: bool = False

    @property
    def api(self) -> deployment.AirflowApi:
        return deployment.AirflowApi(self.airflow_home, self.port)

    @property
    def url(self) -> str:
        return self.api.url

    @staticmethod
    def worker_hostname(i: int) -> str:
        return f"worker-{i}"

    def start(self, name: str, command: list[str], extra: dict[str, str] | None = None) -> None:
        log_dir = self.airflow_home / "cluster-logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        env = {**os.environ, **self.env, hostname.VARIABLE: name, **(extra or {})}
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                ["airflow", *command],
                env=env,
                cwd=PROJECT_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.components[name] = Component(name, process, log_path)

    def start_worker(self, i: int, concurrency: int) -> None:
        name = self.worker_hostname(i)
        self.start(
            name,
            [
                "celery",
                "worker",
                "--celery-hostname",
                f"{name}@%h",
                "--concurrency",
                str(concurrency),
                "--pid",
                str(self.airflow_home / f"{name}.pid"),
                # Task logs are files under the shared AIRFLOW_HOME, read by the api-server:
                # no log server (they would all want port 8793).
                "--skip-serve-logs",
            ],
            # Load plugins (ours mount the web apps: seconds of imports) in the worker before
            # Celery forks its pool, not again in every task process: a 3 s task took 8-20 s
            # from start to end with lazy loading on 2 busy cores, 3.3-10 s without it.
            {"AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False"},
        )

    def check(self) -> None:
        for component in self.components.values():
            if component.process.poll() is not None:
                raise ClusterError(
                    f"{component.name} exited with {component.process.returncode}\n"
                    f"{component.tail()}"
                )

    def describe(self, lines: int = 15) -> str:
        return "\n".join(
            f"--- {name} ({component.log_path}):\n{component.tail(lines)}"
            for name, component in self.components.items()
        )

    def wait_healthy(self, timeout: float = 300) -> None:
        """Wait for the metadata DB, scheduler and dag-processor to report healthy, the SendGrid
        pool to exist, and every worker to say it is ready."""
        deadline = time.monotonic() + timeout
        slots = deployment.pool_slots({**os.environ, **self.env})
        self.api.wait_healthy(
            ("scheduler", "dag_processor"), timeout, self.check, self.describe, slots
        )
        for i in range(self.workers):
            worker = self.components[self.worker_hostname(i)]
            while READY not in worker.log_path.read_text(errors="replace"):
                self.check()
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"{worker.name} not ready after {timeout:.0f}s\n{worker.tail()}"
                    )
                time.sleep(1)

    def kill_worker(self, i: int) -> set[int]:
        """SIGKILL every process of worker i's session; the pids killed."""
        worker = self.components[self.worker_hostname(i)]
        killed: set[int] = set()
        deadline = time.monotonic() + 30
        while (left := worker.session()) and time.monotonic() < deadline:
            for pid in left:
                deployment.send_signal(pid, signal.SIGKILL)
            killed |= left
            worker.process.poll()
            time.sleep(0.1)
        worker.process.wait(timeout=30)
        if left := worker.session():
            raise ClusterError(f"{worker.name}: processes survived SIGKILL: {sorted(left)}")
        return killed

    def processes(self) -> set[int]:
        table = process_table()
        return {pid for c in self.components.values() for pid in c.session(table)}

    def stop(self, grace: float = 30) -> None:
        """Terminate every component (SIGTERM, then SIGKILL after `grace`), wait for them,
        drop the metadata database and release the Redis database. Idempotent."""
        if self.stopped:
            return
        self.stopped = True
        try:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 15)):
                for pid in self.processes():
                    deployment.send_signal(pid, sig)
                deadline = time.monotonic() + wait
                while self.processes() and time.monotonic() < deadline:
                    for component in self.components.values():
                        component.process.poll()  # reap our direct children
                    time.sleep(0.2)
                if not self.processes():
                    break
            for component in self.components.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    component.process.wait(timeout=10)
            if left := self.processes():
                raise ClusterError(f"processes still running after SIGKILL: {sorted(left)}")
        finally:
            try:
                drop_database(self.metadata_url)
            finally:
                self.claim.release()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_cluster(
    airflow_home: Path,
    port: int,
    workers: int = 2,
    env: dict[str, str] | None = None,
    *,
    worker_concurrency: int = 4,
) -> Cluster:
    """Create the metadata database, claim a Redis database, migrate, then start the api-server,
    scheduler, dag-processor and `workers` Celery workers on 127.0.0.1:`port`. `env` overrides
    any setting (LIFECYCLE_*, AIRFLOW_CONN_*, AIRFLOW__...). Call `wait_healthy()` next, and
    `stop()` in any case (it also undoes a start that failed half-way)."""
    if deployment.port_in_use(port):
        raise ClusterError(f"port {port} on 127.0.0.1 is already in use")
    airflow_home = airflow_home.resolve()
    airflow_home.mkdir(parents=True, exist_ok=True)
    claim = claim_redis_db()
    try:
        metadata_url = create_database()
    except BaseException:
        claim.release()
        raise
    claim.keep_alive()
    parallelism = max(8, workers * worker_concurrency)
    settings = cluster_env(
        airflow_home,
        port,
        metadata_url,
        claim.broker_url,
        worker_concurrency=worker_concurrency,
        parallelism=parallelism,
    )
    cluster = Cluster(airflow_home, port, {**settings, **(env or {})}, metadata_url, claim)
    cluster.workers = workers
    try:
        migrate = subprocess.run(
            ["airflow", "db", "migrate"],
            env={**os.environ, **cluster.env, hostname.VARIABLE: "migrate"},
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if migrate.returncode:
            output = f"{migrate.stdout}\n{migrate.stderr}".strip()
            raise ClusterError(f"airflow db migrate failed:\n{output[-3000:]}")
        cluster.start("api-server", ["api-server"])
        cluster.start("scheduler", ["scheduler"])
        cluster.start("dag-processor", ["dag-processor"])
        for i in range(workers):
            cluster.start_worker(i, worker_concurrency)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lifecycle.devtools.cluster",
        description=(
            "Airflow with the CeleryExecutor on this machine: an api-server, a scheduler, a "
            "dag-processor and N Celery workers (hostnames worker-0, worker-1, ...) as separate "
            "processes, with this repo's dags/ and plugins/. Metadata and Celery results in a "
            "fresh PostgreSQL database on 127.0.0.1:5432, the broker in a claimed Redis "
            "database 1-15 on 127.0.0.1:6379; both are removed at exit. Ctrl-C stops it all."
        ),
        epilog=(
            "Tasks read the warehouse and SendGrid from AIRFLOW_CONN_LIFECYCLE_WAREHOUSE (a "
            "PostgreSQL URL: a non-local executor refuses SQLite) and AIRFLOW_CONN_SENDGRID_DEFAULT"
            " in this environment, and need LIFECYCLE_UNSUBSCRIBE_SECRET (shared by every worker)."
        ),
    )
    parser.add_argument("--workers", type=int, default=2, help="Celery workers (default 2)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="task slots per worker ([celery] worker_concurrency, default 4)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("LIFECYCLE_AIRFLOW_PORT", DEFAULT_PORT)),
        help="api-server port (default $LIFECYCLE_AIRFLOW_PORT or 8080)",
    )
    parser.add_argument(
        "--home",
        type=Path,
        default=Path(os.environ.get("AIRFLOW_HOME") or load_settings().home / "airflow-cluster"),
        help="AIRFLOW_HOME (default $AIRFLOW_HOME or .local/airflow-cluster); component logs "
        "in its cluster-logs/",
    )
    args = parser.parse_args(argv)
    if args.workers < 1 or args.concurrency < 1:
        parser.error("--workers and --concurrency must be at least 1")
    deployment.interrupt_on_termination()
    cluster: Cluster | None = None
    try:
        print("migrating a fresh metadata database and starting the cluster...", flush=True)
        cluster = start_cluster(
            args.home, args.port, args.workers, worker_concurrency=args.concurrency
        )
        cluster.wait_healthy(timeout=600)
        workers = ", ".join(cluster.worker_hostname(i) for i in range(args.workers))
        print(
            f"\nAirflow (CeleryExecutor) is up: {cluster.url}  user: {ADMIN_USER}  "
            f"password: {cluster.api.admin_password()}\nworkers: {workers}; broker "
            f"{cluster.claim.broker_url}; metadata database "
            f"{sa.make_url(cluster.metadata_url).database}; logs in "
            f"{cluster.airflow_home / 'cluster-logs'}\n"
            "Ctrl-C stops every process.\n",
            flush=True,
        )
        while True:
            cluster.check()
            time.sleep(2)
    except KeyboardInterrupt:
        return 0
    except DeploymentError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if cluster is not None:
            print("stopping every cluster process...", flush=True)
            cluster.stop()
            print("stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
