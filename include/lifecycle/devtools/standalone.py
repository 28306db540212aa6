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
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import httpx

from lifecycle.core.config import DEFAULT_POOL_SLOTS, PROJECT_ROOT, SENDGRID_POOL, load_settings

DEFAULT_PORT = 8080
PASSWORD_FILE = "simple_auth_manager_passwords.json.generated"
ADMIN_USER = "admin"
POOL_DESCRIPTION = (
    "SendGrid account: the deliver tasks of every campaign (LIFECYCLE_SENDGRID_POOL_SLOTS)"
)


class StandaloneError(RuntimeError):
    pass


def airflow_env(airflow_home: Path, port: int) -> dict[str, str]:
    """Settings for a 2-core dev machine; the api-server URLs follow the port."""
    base_url = f"http://127.0.0.1:{port}"
    return {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__BASE_URL": base_url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        # The single api-server worker stalls for seconds on a loaded machine; Airflow's 5 s
        # made task starts fail (and retry 30 s later) while it did.
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
        # `airflow standalone` starts its components by name: use this venv's airflow.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
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
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def admin_password(self) -> str:
        path = self.airflow_home / PASSWORD_FILE
        try:
            return json.loads(path.read_text())[ADMIN_USER]
        except (OSError, ValueError, KeyError):
            raise StandaloneError(f"no generated admin password in {path} yet") from None

    def api_token(self) -> str:
        """A JWT for the REST API (`Authorization: Bearer ...`), logged in as admin."""
        response = httpx.post(
            f"{self.url}/auth/token",
            json={"username": ADMIN_USER, "password": self.admin_password()},
            timeout=30,
        )
        response.raise_for_status()
        return response.json()["access_token"]

    def wait_healthy(self, timeout: float = 180) -> None:
        """Wait until the metadata DB, scheduler, dag-processor and triggerer report healthy,
        then create the SendGrid pool."""
        deadline = time.monotonic() + timeout
        status: object = "no answer"
        while time.monotonic() < deadline:
            self.processes()  # remember the descendants while the tree is intact
            if self.process.poll() is not None:
                raise StandaloneError(
                    f"airflow standalone exited with {self.process.returncode}\n{self.log_tail()}"
                )
            try:
                status = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()
            except (httpx.HTTPError, ValueError) as exc:
                status = repr(exc)
            if _all_healthy(status) and (self.airflow_home / PASSWORD_FILE).exists():
                self.ensure_pool()
                return
            time.sleep(1)
        raise StandaloneError(
            f"airflow standalone not healthy after {timeout:.0f}s: {status}\n{self.log_tail()}"
        )

    def ensure_pool(self) -> None:
        """The SendGrid pool every deliver task runs in, sized from the settings (a task in a
        pool that does not exist is never scheduled)."""
        pool = {
            "name": SENDGRID_POOL,
            "slots": self.pool_slots,
            "description": POOL_DESCRIPTION,
        }
        api = httpx.Client(
            base_url=f"{self.url}/api/v2",
            headers={"Authorization": f"Bearer {self.api_token()}"},
            timeout=30,
        )
        with api:
            created = api.post("/pools", json=pool)
            if created.status_code == 409:  # there already: take the configured size
                api.patch(f"/pools/{SENDGRID_POOL}", json=pool).raise_for_status()
            else:
                created.raise_for_status()

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def processes(self) -> set[int]:
        """Live processes it started: its session plus every descendant seen so far."""
        table = _process_table()
        alive = {
            pid for pid, started in self.seen.items() if table.get(pid, _GONE).started == started
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
                _signal(pid, sig)
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
    if _port_in_use(port):
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
    slots = int(full_env.get("LIFECYCLE_SENDGRID_POOL_SLOTS") or DEFAULT_POOL_SLOTS)
    return Standalone(process, airflow_home, port, log_path, slots)


def _all_healthy(status: object) -> bool:
    components = ("metadatabase", "scheduler", "dag_processor", "triggerer")
    return isinstance(status, dict) and all(
        (status.get(name) or {}).get("status") == "healthy" for name in components
    )


class _Proc(NamedTuple):
    ppid: int
    session: int
    started: int  # clock ticks after boot


_GONE = _Proc(-1, -1, -1)


def _process_table() -> dict[int, _Proc]:
    """Every live (non-zombie) process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp session ...": comm may contain spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] not in ("Z", "X"):
            table[int(entry.name)] = _Proc(int(fields[1]), int(fields[3]), int(fields[19]))
    return table


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


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
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
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
    except StandaloneError as exc:
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
