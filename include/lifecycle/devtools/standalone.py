"""`make airflow`: `airflow standalone` with this repo's DAGs and plugins, stopped cleanly.

The plain `airflow standalone` leaves its scheduler, api-server, triggerer and executor workers
running when it is killed. Here it runs in its own session; `Standalone.stop()` terminates every
process of that session (task processes move to their own process groups but stay in it) and
every descendant seen while it ran, then checks that none is left.

Other engineers' end-to-end tests use `start_standalone()` with a temporary AIRFLOW_HOME and a
free port.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lifecycle.core.config import DEFAULT_POOL_SLOTS, PROJECT_ROOT, load_settings
from lifecycle.devtools import deployment
from lifecycle.devtools.deployment import (
    ADMIN_USER,
    GONE,
    POOL_DESCRIPTION,
    DeploymentError,
    process_table,
)

__all__ = ["POOL_DESCRIPTION", "Standalone", "StandaloneError", "airflow_env", "start_standalone"]

DEFAULT_PORT = 8080


class StandaloneError(DeploymentError):
    pass


def airflow_env(airflow_home: Path, port: int) -> dict[str, str]:
    """The shared settings (`deployment.airflow_env`), LocalExecutor and SQLite metadata."""
    return {
        **deployment.airflow_env(airflow_home, port),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
    }


@dataclass
class Standalone:
    process: subprocess.Popen[bytes]
    airflow_home: Path
    port: int
    log_path: Path | None
    pool_slots: int = DEFAULT_POOL_SLOTS
    # pid -> start time: a pid the kernel reuses for another process is not ours.
    seen: dict[int, int] = field(default_factory=dict)

    @property
    def api(self) -> deployment.AirflowApi:
        return deployment.AirflowApi(self.airflow_home, self.port)

    @property
    def url(self) -> str:
        return self.api.url

    def admin_password(self) -> str:
        return self.api.admin_password()

    def api_token(self) -> str:
        """A JWT for the REST API (`Authorization: Bearer ...`), logged in as admin."""
        return self.api.token()

    def wait_healthy(self, timeout: float = 180) -> None:
        """Wait until the metadata DB, scheduler, dag-processor and triggerer report healthy,
        then create the SendGrid pool."""

        def check() -> None:
            self.processes()  # remember the descendants while the tree is intact
            if self.process.poll() is not None:
                raise StandaloneError(
                    f"airflow standalone exited with {self.process.returncode}\n{self.log_tail()}"
                )

        components = ("scheduler", "dag_processor", "triggerer")
        self.api.wait_healthy(components, timeout, check, self.log_tail, self.pool_slots)

    def ensure_pool(self) -> None:
        self.api.ensure_pool(self.pool_slots)

    def log_tail(self, lines: int = 40) -> str:
        return deployment.tail(self.log_path, lines)

    def processes(self) -> set[int]:
        """Live processes it started: its session plus every descendant seen so far."""
        table = process_table()
        alive = {
            pid for pid, started in self.seen.items() if table.get(pid, GONE).started == started
        }
        ours = alive | {pid for pid, proc in table.items() if proc.session == self.process.pid}
        children: dict[int, list[int]] = {}
        for pid, proc in table.items():
            children.setdefault(proc.ppid, []).append(pid)
        stack = list(ours)
        while stack:
            for child in children.get(stack.pop(), []):
                if child not in ours:
                    ours.add(child)
                    stack.append(child)
        self.seen.update({pid: table[pid].started for pid in ours})
        return ours

    def stop(self, grace: float = 20) -> None:
        """Terminate every process it started; raise if any survives SIGKILL."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
            for pid in self.processes():
                deployment.send_signal(pid, sig)
            deadline = time.monotonic() + wait
            while self.processes() and time.monotonic() < deadline:
                self.process.poll()  # reap our direct child
                time.sleep(0.2)
            if not self.processes():
                break
        self.process.poll()
        if left := self.processes():
            raise StandaloneError(f"processes still running after SIGKILL: {sorted(left)}")

    def __enter__(self) -> Standalone:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_standalone(
    airflow_home: Path, port: int, env: dict[str, str] | None = None, *, echo: bool = False
) -> Standalone:
    """Start `airflow standalone` in its own session on 127.0.0.1:`port`.

    Output goes to `airflow_home/standalone.log`, or to this terminal with `echo=True`.
    `env` overrides the environment (e.g. LIFECYCLE_WAREHOUSE_URL, AIRFLOW_CONN_*).
    """
    if deployment.port_in_use(port):
        # A health check would otherwise answer from whatever already listens there.
        raise StandaloneError(f"port {port} on 127.0.0.1 is already in use")
    airflow_home = airflow_home.resolve()
    airflow_home.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **airflow_env(airflow_home, port), **(env or {})}
    log_path = None if echo else airflow_home / "standalone.log"
    with open(log_path or os.devnull, "ab") as log:
        process = subprocess.Popen(
            ["airflow", "standalone"],
            env=full_env,
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=None if echo else log,
            stderr=None if echo else subprocess.STDOUT,
            start_new_session=True,
        )
    return Standalone(process, airflow_home, port, log_path, deployment.pool_slots(full_env))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lifecycle.devtools.standalone",
        description="airflow standalone with this repo's dags/ and plugins/; Ctrl-C stops it all.",
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
        default=Path(os.environ.get("AIRFLOW_HOME") or load_settings().home / "airflow"),
        help="AIRFLOW_HOME (default $AIRFLOW_HOME or .local/airflow)",
    )
    args = parser.parse_args(argv)
    # Ctrl-C and SIGTERM take the same clean path, even if SIGINT was inherited as ignored.
    deployment.interrupt_on_termination()
    try:
        airflow = start_standalone(args.home, args.port, echo=True)
    except StandaloneError as exc:
        print(f"{exc}: choose another with --port", file=sys.stderr)
        return 1
    try:
        airflow.wait_healthy(timeout=300)
        print(
            f"\nAirflow is up: {airflow.url}  user: {ADMIN_USER}  "
            f"password: {airflow.admin_password()}\nCtrl-C stops every process.\n",
            flush=True,
        )
        airflow.process.wait()
        print(f"airflow standalone exited with {airflow.process.returncode}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except DeploymentError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C must not abandon the processes half-way through stopping them.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stopping every airflow process...", flush=True)
        airflow.stop()
        print("stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
