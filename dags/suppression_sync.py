"""`suppression_sync`: SendGrid's suppression lists in, our own unsubscribes out (hourly).

Pulls bounces, spam reports, invalid emails, global and group unsubscribes (paged, within the
API's rate limits) into the warehouse's `suppressions` table, then pushes unsubscribes made on
our own pages to SendGrid's global list. Idempotent: a retry or a rerun adds nothing twice.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task
from airflow.sdk.exceptions import AirflowSkipException


@task(retries=3, retry_delay=timedelta(minutes=2), execution_timeout=timedelta(minutes=30))
def sync_suppressions() -> dict[str, int]:
    from datetime import UTC, datetime

    from lifecycle.airflow.adapter import runtime_settings
    from lifecycle.feedback import suppressions
    from lifecycle.store import warehouse

    settings = runtime_settings()
    if not settings.sendgrid_api_key:
        raise AirflowSkipException("no SendGrid key (outbox mode): nothing to sync")
    engine = warehouse.engine_for(settings.warehouse_url)
    return suppressions.sync_with_settings(engine, settings, datetime.now(UTC)).to_dict()


@dag(
    dag_id="suppression_sync",
    schedule="23 * * * *",  # off the :00 / :30 peaks SendGrid asks us to avoid
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["lifecycle", "maintenance"],
    doc_md=__doc__,
)
def suppression_sync() -> None:
    sync_suppressions()


suppression_sync()
