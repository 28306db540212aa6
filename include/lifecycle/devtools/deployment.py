"""What `make airflow` (standalone) and `make cluster` (Celery) share: the Airflow settings for
this repo on a 2-core machine, the REST API client, waiting for health, the SendGrid pool, and
the connections that point tasks at a warehouse and a SendGrid (or the local sink).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import httpx

from lifecycle.core.config import DEFAULT_POOL_SLOTS, PROJECT_ROOT, SENDGRID_POOL

PASSWORD_FILE = "simple_auth_manager_passwords.json.generated"
ADMIN_USER = "admin"
POOL_DESCRIPTION = (
    "SendGrid account: the deliver tasks of every campaign (LIFECYCLE_SENDGRID_POOL_SLOTS)"
)


class DeploymentError(RuntimeError):
    pass


def airflow_env(airflow_home: Path, port: int) -> dict[str, str]:
    """Settings every deployment here shares; the api-server URLs follow the port."""
    base_url = f"http://127.0.0.1:{port}"
    return {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
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
        # Airflow starts some of its components by name: use this venv's airflow.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def lifecycle_env(
    warehouse_url: str, sendgrid_url: str, api_key: str, *, home: Path, secret: str
) -> dict[str, str]:
    """The connections and settings Lifecycle's tasks read: the warehouse, SendGrid (or the
    sink at `sendgrid_url`), a link secret shared by every process (none is generated per
    host under a non-local executor), and LIFECYCLE_HOME."""
    return {
        "LIFECYCLE_HOME": str(home),
        "LIFECYCLE_UNSUBSCRIBE_SECRET": secret,
        # Any SQLAlchemy URL, as lifecycle.airflow.connections reads it (a driver-qualified
        # scheme such as postgresql+psycopg is not a connection type Airflow knows).
        "AIRFLOW_CONN_LIFECYCLE_WAREHOUSE": json.dumps(
            {"conn_type": "generic", "extra": {"sqlalchemy_url": warehouse_url}}
        ),
        "AIRFLOW_CONN_SENDGRID_DEFAULT": json.dumps(
            {"conn_type": "sendgrid", "password": api_key, "host": sendgrid_url}
        ),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class AirflowApi:
    """The api-server of a deployment: login, REST client, health, the SendGrid pool."""

    airflow_home: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def admin_password(self) -> str:
        path = self.airflow_home / PASSWORD_FILE
        try:
            return str(json.loads(path.read_text())[ADMIN_USER])
        except (OSError, ValueError, KeyError):
            raise DeploymentError(f"no generated admin password in {path} yet") from None

    def token(self) -> str:
        """A JWT for the REST API (`Authorization: Bearer ...`), logged in as admin."""
        response = httpx.post(
            f"{self.url}/auth/token",
            json={"username": ADMIN_USER, "password": self.admin_password()},
            timeout=30,
        )
        response.raise_for_status()
        return str(response.json()["access_token"])

    def client(self, timeout: float = 60) -> httpx.Client:
        """A REST client on /api/v2, logged in (a loaded machine stalls the api-server)."""
        return httpx.Client(
            base_url=f"{self.url}/api/v2",
            headers={"Authorization": f"Bearer {self.token()}"},
            timeout=timeout,
        )

    def health(self) -> object:
        try:
            return httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()
        except (httpx.HTTPError, ValueError) as exc:
            return repr(exc)

    def wait_healthy(
        self,
        components: tuple[str, ...],
        timeout: float,
        check: Callable[[], None],
        describe: Callable[[], str],
        pool_slots: int = DEFAULT_POOL_SLOTS,
    ) -> None:
        """Wait until the metadata DB and `components` report healthy and the admin password
        exists, then create the SendGrid pool. `check` raises if a process died; `describe`
        tells why in the error (log tails)."""
        deadline = time.monotonic() + timeout
        status: object = "no answer"
        while time.monotonic() < deadline:
            check()
            status = self.health()
            healthy = isinstance(status, dict) and all(
                (status.get(name) or {}).get("status") == "healthy"
                for name in ("metadatabase", *components)
            )
            if healthy and (self.airflow_home / PASSWORD_FILE).exists():
                self.ensure_pool(pool_slots)
                return
            time.sleep(1)
        raise DeploymentError(f"Airflow not healthy after {timeout:.0f}s: {status}\n{describe()}")

    def ensure_pool(self, slots: int) -> None:
        """The SendGrid pool every deliver task runs in, sized from the settings (a task in a
        pool that does not exist is never scheduled)."""
        pool = {"name": SENDGRID_POOL, "slots": slots, "description": POOL_DESCRIPTION}
        with self.client(timeout=30) as api:
            created = api.post("/pools", json=pool)
            if created.status_code == 409:  # there already: take the configured size
                api.patch(f"/pools/{SENDGRID_POOL}", json=pool).raise_for_status()
            else:
                created.raise_for_status()


def pool_slots(env: dict[str, str]) -> int:
    return int(env.get("LIFECYCLE_SENDGRID_POOL_SLOTS") or DEFAULT_POOL_SLOTS)


def tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class Proc(NamedTuple):
    ppid: int
    session: int
    started: int  # clock ticks after boot


GONE = Proc(-1, -1, -1)


def send_signal(pid: int, sig: signal.Signals) -> None:
    """`sig` to `pid`, if it still exists."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def interrupt_on_termination() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt, so `finally` blocks stop what was started."""

    def _interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def process_table() -> dict[int, Proc]:
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
            table[int(entry.name)] = Proc(int(fields[1]), int(fields[3]), int(fields[19]))
    return table


def scale_spec(
    campaign_id: str,
    *,
    batch_size: int,
    max_active_batches: int,
    concurrency: int,
    rate_per_second: int,
) -> dict[str, object]:
    """A live campaign to every customer once (no consent, window or cap in the way): what the
    Celery end-to-end test and `benchmarks.bench_scale` deliver."""
    return {
        "id": campaign_id,
        "status": "live",
        "description": "every customer, once",
        "segment": {
            "occurrence_key": "birthday_year",
            "rule": {"feature": "customer_id", "op": "ge", "value": 0},
        },
        "template": "onboarding/day0",
        "occurrence_key": "birthday_year",
        "sender": {"email": "hello@lifecycle-demo.shop", "name": "Lifecycle Demo Shop"},
        "policies": {
            "requires_consent": False,
            "send_window": None,
            "frequency_cap": {"max_emails": 10, "days": 7},
        },
        "delivery": {
            "rate_per_second": rate_per_second,
            "concurrency": concurrency,
            "batch_size": batch_size,
            "max_active_batches": max_active_batches,
            "categories": ["lifecycle", "scale"],
        },
    }


def prepare_warehouse(url: str, customers: int, as_of: datetime, seed: int = 7) -> None:
    """Migrate, seed `customers` and materialize their features at `as_of`."""
    from lifecycle.core import features
    from lifecycle.core.config import load_settings
    from lifecycle.devtools import seed as seeding
    from lifecycle.store import warehouse

    engine = warehouse.make_engine(url)
    try:
        warehouse.upgrade(engine)
        seeding.seed(engine, customers, seed=seed, as_of=as_of)
        features.materialize(engine, as_of, load_settings(warehouse_url=url))
    finally:
        engine.dispose()
