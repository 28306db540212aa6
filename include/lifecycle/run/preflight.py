"""Preflight: refuse to start a run that cannot succeed, and say what to fix."""

from __future__ import annotations

import ipaddress
import logging
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import Engine, make_url

from lifecycle.core import render, segments, templates
from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import DEMO_SENDER_ADDRESS, DEMO_UNSUBSCRIBE_MAILBOX, Settings
from lifecycle.run import bulk
from lifecycle.run.clock import utc
from lifecycle.store import warehouse

log = logging.getLogger(__name__)


class PreflightError(RuntimeError):
    """The run cannot start; the message says what to fix."""


def preflight(engine: Engine, spec: CampaignSpec, settings: Settings, *, as_of: datetime) -> None:
    """Raise `PreflightError` unless the warehouse, segment, templates and transport are ready."""
    utc(as_of)
    current, head = warehouse.current_revision(engine), warehouse.head_revision()
    if current != head:
        raise PreflightError(
            f"warehouse is at revision {current or '(empty)'}, code expects {head}: "
            "run `lifecycle db upgrade`"
        )
    transport = settings.chosen_transport()
    if transport == "sendgrid" and not settings.sendgrid_api_key:
        raise PreflightError(
            "transport 'sendgrid' needs an API key: set SENDGRID_API_KEY or the password of "
            "the Airflow connection 'sendgrid_default'"
        )
    if transport not in ("sendgrid", "outbox"):
        raise PreflightError(f"unknown transport {transport!r}: use 'sendgrid' or 'outbox'")
    if gaps := host_state_gaps(settings):
        raise PreflightError(
            f"{settings.executor} may run this campaign's tasks on different hosts, so nothing "
            f"may live on one; set {'; '.join(gaps)}"
        )
    if gaps := deployment_gaps(settings):
        raise PreflightError(
            f"sending through SendGrid at {settings.sendgrid_host} needs, on every host: "
            f"{'; '.join(gaps)}"
        )
    try:
        segments.segment_for(spec, settings)
        renderer = render.get_renderer(settings)
        renderer.preflight(spec)
    except (segments.SegmentError, templates.TemplateProblem) as exc:
        raise PreflightError(f"campaign {spec.id}: {exc}") from None
    if spec.delivery.recipients_per_request > 1:
        for finding in bulk.findings(renderer, spec):
            log.warning("campaign %s, recipients_per_request: %s", spec.id, finding)


def reaches_real_inboxes(settings: Settings) -> bool:
    """Outside the local default: the SendGrid transport at an API host other than loopback
    (the local sink). The outbox and the sink reach no one, so their demo settings are fine."""
    if settings.chosen_transport() != "sendgrid":
        return False
    host = urlsplit(settings.sendgrid_host).hostname or ""
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


def host_state_gaps(settings: Settings) -> list[str]:
    """What a task keeps on its own host and another task of the same run would miss, when the
    executor is not local: a generated link secret, an SQLite warehouse, outbox files."""
    if not settings.runs_on_many_hosts:
        return []
    gaps = []
    if not settings.configured_secrets:
        gaps.append(
            "LIFECYCLE_TOKEN_SECRETS or LIFECYCLE_UNSUBSCRIBE_SECRET on every host (links "
            "signed with a secret generated on one host fail on the others)"
        )
    if make_url(settings.warehouse_url).get_backend_name() == "sqlite":
        gaps.append(
            "the connection lifecycle_warehouse to a PostgreSQL warehouse every host reaches "
            "(an SQLite file lives on one host)"
        )
    if settings.chosen_transport() == "outbox" and settings.shared_dir is None:
        gaps.append(
            "LIFECYCLE_SHARED_DIR to a directory every worker mounts (the outbox writes .eml "
            "files there), or a SendGrid key"
        )
    return gaps


def deployment_gaps(settings: Settings) -> list[str]:
    """What real sending needs and `settings` lacks: settings every host must share (a secret
    generated per host breaks unsubscribe links signed on another) and the sender's own
    addresses instead of the demo's."""
    if not reaches_real_inboxes(settings):
        return []
    gaps = []
    if not settings.configured_secrets:  # at least one configured, the same on every host
        gaps.append(
            "LIFECYCLE_TOKEN_SECRETS or LIFECYCLE_UNSUBSCRIBE_SECRET "
            "(a per-host generated one breaks links)"
        )
    if not settings.sendgrid_webhook_public_key:
        gaps.append("LIFECYCLE_SENDGRID_WEBHOOK_PUBLIC_KEY (SendGrid's Signed Event Webhook key)")
    if settings.sender_address == DEMO_SENDER_ADDRESS:
        gaps.append("LIFECYCLE_SENDER_ADDRESS (your postal address, not the demo's)")
    if settings.unsubscribe_mailbox == DEMO_UNSUBSCRIBE_MAILBOX:
        gaps.append("LIFECYCLE_UNSUBSCRIBE_MAILBOX (your unsubscribe mailbox, not the demo's)")
    return gaps
