"""Preflight: refuse to start a run that cannot succeed, and say what to fix."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import Engine

from lifecycle.core import render, segments, templates
from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import Settings
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
    try:
        segments.segment_for(spec, settings)
        renderer = render.get_renderer(settings)
        renderer.preflight(spec)
    except (segments.SegmentError, templates.TemplateProblem) as exc:
        raise PreflightError(f"campaign {spec.id}: {exc}") from None
    if spec.delivery.recipients_per_request > 1:
        for finding in bulk.findings(renderer, spec):
            log.warning("campaign %s, recipients_per_request: %s", spec.id, finding)
