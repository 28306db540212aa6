"""The failure notifier every campaign task carries."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)


class CampaignFailureNotifier(BaseNotifier):
    """Logs one clear summary when a task has failed for good (no network, no secrets)."""

    template_fields = ()

    def __init__(self, campaign_id: str) -> None:
        super().__init__()
        self.campaign_id = campaign_id

    def notify(self, context: Mapping[str, Any]) -> None:
        ti = context["ti"]
        error = context.get("exception")
        log.error(
            "Campaign %s: task %s%s failed for good in run %s after %s tries: %s. "
            "Rows already sent stay sent and are never re-sent automatically; fix the cause, "
            "then trigger a new run, which takes over what is left inside each customer's send "
            "window (clearing the failed task replays the run at its original as-of).",
            self.campaign_id,
            ti.task_id,
            f"[{ti.map_index}]" if ti.map_index >= 0 else "",
            ti.run_id,
            ti.try_number,
            f"{type(error).__name__}: {error}" if error else "no exception recorded",
        )
