"""Settings from `LIFECYCLE_*` environment variables; the default needs nothing.

Inside Airflow, `lifecycle.airflow` overrides the warehouse URL and SendGrid key from the
connections `lifecycle_warehouse` and `sendgrid_default`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any, overload

PROJECT_ROOT = Path(__file__).resolve().parents[3]
# The embedded default's footer address and unsubscribe mailbox: fine for the demo, refused by
# preflight when emails reach real inboxes (run/preflight.py, `deployment_gaps`).
DEMO_SENDER_ADDRESS = "Lifecycle Demo Shop, 1 Abovyan St, Yerevan 0001, Armenia"
DEMO_UNSUBSCRIBE_MAILBOX = "unsubscribe@lifecycle-demo.shop"
# The Airflow pool every campaign's deliver tasks run in: one per SendGrid account. Its size is
# `Settings.sendgrid_pool_slots`; `make airflow` and the compose init create it.
SENDGRID_POOL = "sendgrid"
DEFAULT_POOL_SLOTS = 4
# Customers per planning partition: the campaign DAG plans each in its own mapped task.
DEFAULT_PARTITION_SIZE = 250_000
# Executors that run every task on the scheduler's own host. Any other (Celery, Kubernetes, Edge,
# ECS, a class path of your own) may run two tasks of one run on two hosts, so nothing a task
# relies on may live on one host (run/preflight.py, `host_state_gaps`).
LOCAL_EXECUTORS = frozenset({"LocalExecutor", "SequentialExecutor", "DebugExecutor"})
# The default Celery queue of Lifecycle's tasks, read when task instances are created (by the
# cluster policy in airflow/policy.py), not when DAG files are parsed. A spec's `queue` wins.
QUEUE_VARIABLE = "LIFECYCLE_CELERY_QUEUE"
# What `airflow celery worker --queues a,b` can name and task_instance.queue (256) can hold.
_QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")


@overload
def _env(name: str, default: str) -> str: ...
@overload
def _env(name: str, default: None = None) -> str | None: ...
def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _positive(name: str, *, whole: bool = False) -> float | None:
    """A positive number (`whole`: a positive integer) from the environment, or None when
    unset; anything else is refused, naming the variable."""
    text = _env(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0 and (value.is_integer() or not whole)):
        kind = "integer" if whole else "number"
        raise ValueError(f"{name} must be a positive {kind}, got {text!r}")
    return value


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def check_queue(name: str) -> str:
    """`name` if it can be a Celery queue, else ValueError saying what a queue name is."""
    if not _QUEUE_NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a Celery queue name: 1-200 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit, e.g. 'bulk'"
        )
    return name


def executor_classes(executor: str | None) -> list[str]:
    """The class names in Airflow's `[core] executor`: a comma-separated list whose entries are a
    core name (`CeleryExecutor`), a class path, or `alias:class.path`."""
    entries = (entry.strip() for entry in (executor or "").split(","))
    return [entry.rsplit(":", 1)[-1].rsplit(".", 1)[-1] for entry in entries if entry]


def _date(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"LIFECYCLE_LEGACY_TOKENS_UNTIL {value!r} is not a YYYY-MM-DD date"
        ) from None


@dataclass(frozen=True)
class Settings:
    home: Path
    warehouse_url: str = field(repr=False)  # may carry a database password
    templates_dir: Path
    campaigns_dir: Path
    sql_dir: Path
    transport: str | None  # "sendgrid", "outbox" or None (choose: sendgrid when a key exists)
    sendgrid_host: str
    public_url: str  # where the unsubscribe page is served (the Airflow API server)
    sender_address: str  # postal address in every footer (CAN-SPAM)
    # Signed Event Webhook: base64 DER public key (not a secret); None accepts unsigned posts.
    sendgrid_webhook_public_key: str | None = None
    webhook_max_age_seconds: int = 600  # replay window for signed webhook timestamps
    # mailto target of the List-Unsubscribe header (RFC 2369), next to the one-click https URL
    unsubscribe_mailbox: str = DEMO_UNSUBSCRIBE_MAILBOX
    sendgrid_api_key: str | None = field(default=None, repr=False)
    unsubscribe_secret: str | None = field(default=None, repr=False)
    # The SendGrid account's send rate (requests/s) shared by every campaign; None: no account
    # limit, each campaign's own rate_per_second only. Each of the pool's slots gets an equal
    # share, so all campaigns delivering at once stay within it (`account_share`).
    sendgrid_rate_per_second: float | None = None
    sendgrid_pool_slots: int = (
        DEFAULT_POOL_SLOTS  # deliver tasks of all campaigns at once (the Airflow pool)
    )

    def account_share(self) -> float | None:
        """Requests/s one deliver task may use of the account's rate."""
        if self.sendgrid_rate_per_second is None:
            return None
        return self.sendgrid_rate_per_second / self.sendgrid_pool_slots

    # An `unknown` row with no SendGrid event this long after its attempt may be requeued.
    unknown_quiet_hours: float = 24.0
    # the preference centre's topics and their SendGrid unsubscribe groups
    preferences_file: Path = PROJECT_ROOT / "include" / "preferences.yaml"
    # Secrets of unsubscribe and survey links, newest first: the first signs, every one verifies,
    # so a secret is rotated by putting a new one in front and dropping the old one later.
    token_secrets: tuple[str, ...] = field(default=(), repr=False)
    # Links in the old format (the email address readable in the URL) are refused after this day.
    legacy_tokens_until: date | None = None
    # Airflow's `[core] executor` where this runs (None: not under Airflow, one process).
    executor: str | None = None
    # A directory every host mounts (NFS, a shared volume): the outbox and privacy exports go
    # there instead of under `home`. Required for them when tasks run on many hosts.
    shared_dir: Path | None = None
    # Audience members per planning partition (a mapped `plan_partition` task each).
    partition_size: int = DEFAULT_PARTITION_SIZE

    @property
    def runs_on_many_hosts(self) -> bool:
        """Whether tasks may run on several hosts: any executor but a local one."""
        return any(name not in LOCAL_EXECUTORS for name in executor_classes(self.executor))

    @property
    def configured_secrets(self) -> tuple[str, ...]:
        """Token secrets set by the operator, newest first; LIFECYCLE_UNSUBSCRIBE_SECRET (the one
        setting before rotation existed) comes last. Empty: one is generated under `home`."""
        listed = self.token_secrets
        if self.unsubscribe_secret and self.unsubscribe_secret not in listed:
            listed = (*listed, self.unsubscribe_secret)
        return listed

    @property
    def outbox_dir(self) -> Path:
        return (self.shared_dir or self.home) / "outbox"

    @property
    def exports_dir(self) -> Path:
        """Where privacy exports are written (owner-only JSON files)."""
        return (self.shared_dir or self.home) / "privacy_exports"

    def requeue_quiet_period(self) -> timedelta | None:
        """How long an `unknown` row waits for SendGrid's events before it may be requeued;
        None without a signed event webhook (no event will ever come to resolve it)."""
        if not self.sendgrid_webhook_public_key:
            return None
        return timedelta(hours=self.unknown_quiet_hours)

    def chosen_transport(self) -> str:
        if self.transport:
            return self.transport
        return "sendgrid" if self.sendgrid_api_key else "outbox"


def load_settings(**overrides: Any) -> Settings:
    """Settings from `LIFECYCLE_*` variables (and `SENDGRID_API_KEY`); `overrides` win."""
    home = Path(_env("LIFECYCLE_HOME", str(PROJECT_ROOT / ".local")))
    settings = Settings(
        home=home,
        warehouse_url=_env("LIFECYCLE_WAREHOUSE_URL", f"sqlite:///{home / 'warehouse.db'}"),
        templates_dir=Path(_env("LIFECYCLE_TEMPLATES_DIR", str(PROJECT_ROOT / "templates"))),
        campaigns_dir=Path(
            _env("LIFECYCLE_CAMPAIGNS_DIR", str(PROJECT_ROOT / "include" / "campaigns"))
        ),
        sql_dir=Path(_env("LIFECYCLE_SQL_DIR", str(PROJECT_ROOT / "include" / "sql"))),
        transport=_env("LIFECYCLE_TRANSPORT"),
        sendgrid_host=_env("LIFECYCLE_SENDGRID_HOST", "https://api.sendgrid.com"),
        public_url=_env("LIFECYCLE_PUBLIC_URL", "http://127.0.0.1:8080"),
        sender_address=_env("LIFECYCLE_SENDER_ADDRESS", DEMO_SENDER_ADDRESS),
        sendgrid_webhook_public_key=_env("LIFECYCLE_SENDGRID_WEBHOOK_PUBLIC_KEY"),
        webhook_max_age_seconds=int(_env("LIFECYCLE_WEBHOOK_MAX_AGE_SECONDS", "600")),
        unsubscribe_mailbox=_env("LIFECYCLE_UNSUBSCRIBE_MAILBOX", DEMO_UNSUBSCRIBE_MAILBOX),
        sendgrid_api_key=_env("SENDGRID_API_KEY"),
        unsubscribe_secret=_env("LIFECYCLE_UNSUBSCRIBE_SECRET"),
        sendgrid_rate_per_second=_positive("LIFECYCLE_SENDGRID_RATE_PER_SECOND"),
        sendgrid_pool_slots=int(
            _positive("LIFECYCLE_SENDGRID_POOL_SLOTS", whole=True) or DEFAULT_POOL_SLOTS
        ),
        unknown_quiet_hours=float(_env("LIFECYCLE_UNKNOWN_QUIET_HOURS", "24")),
        preferences_file=Path(
            _env("LIFECYCLE_PREFERENCES_FILE", str(PROJECT_ROOT / "include" / "preferences.yaml"))
        ),
        token_secrets=tuple(_env("LIFECYCLE_TOKEN_SECRETS", "").replace(",", " ").split()),
        legacy_tokens_until=_date(_env("LIFECYCLE_LEGACY_TOKENS_UNTIL")),
        executor=_env("AIRFLOW__CORE__EXECUTOR"),
        shared_dir=_path(_env("LIFECYCLE_SHARED_DIR")),
        partition_size=int(
            _positive("LIFECYCLE_PARTITION_SIZE", whole=True) or DEFAULT_PARTITION_SIZE
        ),
    )
    return replace(settings, **overrides)
