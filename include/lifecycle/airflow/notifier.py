"""Alerts: a campaign that fails, stops, leaves emails of unknown fate or misses its deadline
tells a person what happened and what to do.

Channels are Airflow connections; each is optional, and without either an alert is a log line:

* `lifecycle_alerts_smtp`: an SMTP connection (the smtp provider's `SmtpNotifier` sends it);
  host, port, login/password, and in its extra `from_email` and `to` (comma-separated).
* `lifecycle_alerts_webhook`: a chat tool's incoming-webhook URL (Slack, Mattermost, Rocket.Chat,
  Google Chat...) in its host, or in its extra `url`; we POST `{"text": message}`.

`CampaignFailureNotifier` is every campaign task's failure callback. It alerts once per failed
run: for preflight, plan or approve failing, and for finalize, which judges the run (stopped,
unknown rows, undelivered emails, expired approval); a failed deliver task only logs, as
finalize then reports the run. `CampaignDeadlineNotifier` is the DAG's deadline-alert callback
(run by the triggerer when a run has not finished `deadline_hours` after it was queued).
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from airflow.sdk import BaseHook, BaseNotifier, Connection
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

if TYPE_CHECKING:  # imported when an alert is sent, not each time a DAG file is parsed
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier
    from airflow.sdk import Context

log = logging.getLogger(__name__)

SMTP_CONN_ID = "lifecycle_alerts_smtp"
WEBHOOK_CONN_ID = "lifecycle_alerts_webhook"
WEBHOOK_TIMEOUT_S = 10.0
QUIET_TASKS = frozenset({"deliver"})  # finalize reports what their failure did to the run


class ReportedUpstream(AirflowFailException):
    """finalize fails only because preflight or plan failed, whose own alert said why."""


@dataclass(frozen=True)
class Alert:
    subject: str
    text: str  # what happened, then what to do

    def html(self) -> str:
        return f"<pre style='white-space: pre-wrap'>{html.escape(self.text)}</pre>"


class CampaignFailureNotifier(BaseNotifier):
    """Logs one clear summary when a task has failed for good and alerts the channels."""

    template_fields = ()

    def __init__(self, campaign_id: str) -> None:
        super().__init__()
        self.campaign_id = campaign_id

    def notify(self, context: Mapping[str, Any]) -> None:
        ti = context["ti"]
        error = context.get("exception")
        alert = failure_alert(
            self.campaign_id,
            task=f"{ti.task_id}{f'[{ti.map_index}]' if ti.map_index >= 0 else ''}",
            run_id=ti.run_id,
            tries=ti.try_number,
            error=f"{type(error).__name__}: {error}" if error else "no exception recorded",
        )
        log.error("%s: %s", alert.subject, alert.text)
        if ti.task_id in QUIET_TASKS or isinstance(error, ReportedUpstream):
            return
        send(alert, context)


class CampaignDeadlineNotifier(BaseNotifier):
    """A campaign run is not finished by its deadline (an Airflow deadline alert)."""

    template_fields = ()

    def __init__(self, campaign_id: str, context: Any = None) -> None:
        super().__init__(context=context)
        self.campaign_id = campaign_id

    async def async_notify(self, context: Mapping[str, Any]) -> None:
        run = context.get("dag_run") or {}
        deadline = (context.get("deadline") or {}).get("deadline_time")
        alert = deadline_alert(self.campaign_id, str(run.get("dag_run_id")), str(deadline))
        log.error("%s: %s", alert.subject, alert.text)
        import httpx

        smtp, webhook = await _aconnection(SMTP_CONN_ID), await _aconnection(WEBHOOK_CONN_ID)
        if smtp is not None:
            await _smtp_notifier(smtp, alert).async_notify(cast("Context", context))
        if webhook is not None:
            async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S) as client:
                response = await client.post(webhook_url(webhook), json={"text": _chat(alert)})
                response.raise_for_status()


def failure_alert(campaign_id: str, *, task: str, run_id: str, tries: int, error: str) -> Alert:
    return Alert(
        subject=f"Campaign {campaign_id}: run failed ({task})",
        text=(
            f"Campaign {campaign_id}: task {task} failed for good in run {run_id} after {tries} "
            f"tries.\n\nWhat happened: {error}\n\n"
            "What to do: emails already sent stay sent and are never re-sent automatically. "
            "Fix the cause named above, then trigger a new run: it takes over the emails left, "
            "inside each customer's send window (clearing the failed task instead replays the "
            "run at its original as-of)."
        ),
    )


def deadline_alert(campaign_id: str, run_id: str, deadline: str) -> Alert:
    return Alert(
        subject=f"Campaign {campaign_id}: run missed its deadline",
        text=(
            f"Campaign {campaign_id}, run {run_id}: not finished by its deadline ({deadline} "
            "UTC).\n\nWhat happened: the run is still waiting (for an approval, a pool slot of "
            "the SendGrid account, or the scheduler) or is running slowly.\n\n"
            "What to do: open the run in Airflow and look at the task that is not green: "
            "answer a waiting approval (Required actions), check whether other campaigns hold "
            "the 'sendgrid' pool, or read the running task's log. Nothing is sent twice if you "
            "let it finish."
        ),
    )


def send(alert: Alert, context: Mapping[str, Any]) -> None:
    """To every configured channel; a channel that fails is logged, never raised (the task
    has failed already, and the other channel should still get it)."""
    import httpx

    if (smtp := _connection(SMTP_CONN_ID)) is not None:
        try:
            _smtp_notifier(smtp, alert).notify(cast("Context", context))
        except Exception as exc:  # any SMTP or connection problem: log it, try the webhook
            log.error("alert email not sent: %s: %s", type(exc).__name__, exc)
    if (webhook := _connection(WEBHOOK_CONN_ID)) is not None:
        try:
            response = httpx.post(
                webhook_url(webhook), json={"text": _chat(alert)}, timeout=WEBHOOK_TIMEOUT_S
            )
            response.raise_for_status()
        except httpx.HTTPError as exc:  # the URL may hold a token: never log it
            log.error("alert webhook not delivered: %s", type(exc).__name__)


def webhook_url(conn: Connection) -> str:
    if url := conn.extra_dejson.get("url"):
        return str(url)
    host = (conn.host or "").rstrip("/")
    if "://" in host:
        return host
    port = f":{conn.port}" if conn.port else ""
    return f"{conn.schema or 'https'}://{host}{port}"


def _smtp_notifier(conn: Connection, alert: Alert) -> SmtpNotifier:
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    recipients = [a.strip() for a in str(conn.extra_dejson.get("to", "")).split(",") if a.strip()]
    if not recipients:
        raise ValueError(f"connection {SMTP_CONN_ID!r} needs 'to' in its extra")
    # notify()/async_notify() directly: the texts are sent as they are, never Jinja-rendered.
    return SmtpNotifier(
        to=recipients, subject=alert.subject, html_content=alert.html(), smtp_conn_id=SMTP_CONN_ID
    )


def _chat(alert: Alert) -> str:
    return f"*{alert.subject}*\n{alert.text}"


def _connection(conn_id: str) -> Connection | None:
    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


async def _aconnection(conn_id: str) -> Connection | None:
    try:
        return await BaseHook.aget_connection(conn_id)
    except AirflowNotFoundException:
        return None
