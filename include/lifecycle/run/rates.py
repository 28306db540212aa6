"""How fast one deliver task may send: light enough to import while a DAG file is parsed."""

from __future__ import annotations

from datetime import timedelta

from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import Settings

DELIVER_TIMEOUT_MARGIN = timedelta(minutes=15)  # claiming, rendering, recording, retries


def task_rate(spec: CampaignSpec, settings: Settings) -> float:
    """Requests/s of one deliver task: its share of the campaign's rate (the campaign's batch
    tasks run in parallel), and never more than its share of the SendGrid account's rate (the
    account's pool slots run in parallel, whichever campaigns they belong to)."""
    campaign = spec.delivery.rate_per_second / spec.delivery.max_active_batches
    account = settings.account_share()
    return campaign if account is None else min(campaign, account)


def deliver_timeout(spec: CampaignSpec, settings: Settings) -> timedelta:
    """Twice the time a full batch takes at the task's rate, plus a margin: a task still
    running then is stuck (its rows in flight become `unknown` on the retry, never resent)."""
    seconds = 2 * spec.delivery.batch_size / task_rate(spec, settings)
    return timedelta(seconds=seconds) + DELIVER_TIMEOUT_MARGIN
