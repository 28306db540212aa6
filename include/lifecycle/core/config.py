"""Settings from `LIFECYCLE_*` environment variables; the default needs nothing.

Inside Airflow, `lifecycle.airflow` overrides the warehouse URL and SendGrid key from the
connections `lifecycle_warehouse` and `sendgrid_default`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, overload

PROJECT_ROOT = Path(__file__).resolve().parents[3]
# The embedded default's footer address and unsubscribe mailbox: fine for the demo, refused by
# preflight when emails reach real inboxes (run/preflight.py, `deployment_gaps`).
DEMO_SENDER_ADDRESS = "Lifecycle Demo Shop, 1 Abovyan St, Yerevan 0001, Armenia"
DEMO_UNSUBSCRIBE_MAILBOX = "unsubscribe@lifecycle-demo.shop"


@overload
def _env(name: str, default: str) -> str: ...
@overload
def _env(name: str, default: None = None) -> str | None: ...
def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


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

    @property
    def outbox_dir(self) -> Path:
        return self.home / "outbox"

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
    )
    return replace(settings, **overrides)
