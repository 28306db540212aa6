"""The public web app: SendGrid's event webhook, the unsubscribe pages and the feedback page
(`survey_page`).

No login protects these routes; each is protected by its own proof instead (the webhook by
SendGrid's ECDSA signature, an unsubscribe by its HMAC token). The Airflow plugin mounts
`create_app(...)` at /lifecycle with settings from the Airflow connections; standalone,
`uvicorn lifecycle.web.public:app` (or `lifecycle serve-public`) serves the same routes under
/lifecycle, configured from the environment.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cached_property
from typing import Annotated

from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Engine, select

from lifecycle.core.config import Settings, load_settings
from lifecycle.feedback import events, unsubscribe
from lifecycle.store import warehouse
from lifecycle.store.schema import send_ledger
from lifecycle.web import preferences, survey_page
from lifecycle.web.settings import SettingsSource, provider

log = logging.getLogger(__name__)
PREFIX = "/lifecycle"
LOCALES = ("en", "hy", "ka")


class _Context:
    """Settings, engine, key and page templates, resolved on first use (not at import)."""

    def __init__(self, settings: SettingsSource, clock: Callable[[], float]) -> None:
        self._settings = provider(settings)
        self.clock = clock

    @cached_property
    def settings(self) -> Settings:
        return self._settings()

    @cached_property
    def engine(self) -> Engine:
        return warehouse.engine_for(self.settings.warehouse_url)

    @cached_property
    def public_key(self) -> ec.EllipticCurvePublicKey | None:
        key = self.settings.sendgrid_webhook_public_key
        if not key:
            log.warning("no SendGrid webhook public key configured: accepting unsigned events")
            return None
        return events.load_public_key(key)

    @cached_property
    def pages(self) -> Environment:
        loader = FileSystemLoader(self.settings.templates_dir / "_pages")
        return Environment(loader=loader, autoescape=select_autoescape(default=True))


async def limited_body(request: Request) -> bytes:
    """The raw body, refused with 413 past MAX_BODY_BYTES without reading it all."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > events.MAX_BODY_BYTES:
        raise events.WebhookRejected(413, f"body larger than {events.MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > events.MAX_BODY_BYTES:
            raise events.WebhookRejected(413, f"body larger than {events.MAX_BODY_BYTES} bytes")
    return bytes(body)


def _mask(email: str) -> str:
    """a***@example.com: enough for the owner to recognise, little for a forwarded link."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"


def customer_locale(engine: Engine, customer_id: int) -> str:
    """The locale of this customer's latest email, reduced to one we have pages for."""
    query = (
        select(send_ledger.c.locale)
        .where(send_ledger.c.customer_id == customer_id, send_ledger.c.locale.is_not(None))
        .order_by(send_ledger.c.id.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        raw = conn.execute(query).scalar()
    language = (raw or "").replace("_", "-").split("-")[0].lower()
    return language if language in LOCALES else "en"


def create_app(settings: SettingsSource, *, clock: Callable[[], float] = time.time) -> FastAPI:
    """The public routes, relative to the mount point /lifecycle.

    `settings` may be a provider: it is called once, at the first request that needs them
    (the plugin's reads the Airflow connections). `clock` (unix seconds) is what signed
    webhook timestamps are checked against.
    """
    context = _Context(settings, clock)
    app = FastAPI(title="Lifecycle public endpoints", docs_url=None, redoc_url=None)
    app.state.lifecycle = context

    @app.exception_handler(events.WebhookRejected)
    async def rejected(request: Request, exc: events.WebhookRejected) -> JSONResponse:
        log.warning("webhook request rejected: %s", exc)
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.post("/events/sendgrid")
    def sendgrid_events(
        body: Annotated[bytes, Depends(limited_body)], request: Request
    ) -> dict[str, int]:
        if context.public_key is not None:
            events.verify_signature(
                context.public_key,
                body,
                request.headers.get(events.SIGNATURE_HEADER),
                request.headers.get(events.TIMESTAMP_HEADER),
                now=context.clock(),
                max_age_seconds=context.settings.webhook_max_age_seconds,
            )
        received_at = datetime.fromtimestamp(context.clock(), UTC)
        return events.ingest_body(context.engine, body, received_at).to_dict()

    def verified(token: str) -> unsubscribe.Unsubscribe | None:
        try:
            today = datetime.fromtimestamp(context.clock(), UTC).date()
            return unsubscribe.verify(context.settings, context.engine, token, today)
        except unsubscribe.InvalidToken as exc:
            log.info("unsubscribe refused: %s", exc)
            return None

    preferences.register(app, context, verified, customer_locale, _mask)

    app.include_router(survey_page.router(context))
    return app


def standalone_app(settings: Settings | None = None) -> FastAPI:
    """The public routes under /lifecycle, as the Airflow plugin mounts them, configured from
    the environment (`LIFECYCLE_*`) unless `settings` are given."""
    outer = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @outer.get("/health")
    def health() -> dict[str, str]:
        """For a container's health check; outside /lifecycle, so a proxy need not expose it."""
        return {"status": "ok"}

    outer.mount(PREFIX, create_app(settings or load_settings()))
    return outer


app = standalone_app()
