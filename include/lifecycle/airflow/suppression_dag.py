"""`suppression_sync`: SendGrid's suppression lists in, our own unsubscribes out, hourly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, dag, task
from airflow.sdk.exceptions import AirflowSkipException

from lifecycle.airflow.connections import runtime_settings, warehouse_engine
from lifecycle.airflow.errors import explained
from lifecycle.airflow.schedules import START_DATE

DOC_MD = """`suppression_sync`: SendGrid's suppression lists in, our own unsubscribes out (hourly).

Pulls bounces, spam reports, invalid emails, global and group unsubscribes (paged, within the
API's rate limits) into the warehouse's `suppressions` table, then pushes unsubscribes made on
our own pages to SendGrid's global list. Idempotent: a retry or a rerun adds nothing twice.
"""


def build_suppression_dag() -> DAG:
    """`suppression_sync`: one `sync_suppressions` task at 23 minutes past each hour."""

    @dag(
        dag_id="suppression_sync",
        schedule="23 * * * *",  # off the :00 / :30 peaks SendGrid asks us to avoid
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=["lifecycle", "maintenance"],
        doc_md=DOC_MD,
    )
    def suppression_sync() -> None:
        sync_suppressions()

    return suppression_sync()


@task(retries=3, retry_delay=timedelta(minutes=2), execution_timeout=timedelta(minutes=30))
@explained
def sync_suppressions() -> dict[str, int]:
    from lifecycle.feedback import suppressions

    settings = runtime_settings()
    if not settings.sendgrid_api_key:
        raise AirflowSkipException("no SendGrid key (outbox mode): nothing to sync")
    engine = warehouse_engine(settings)
    return suppressions.sync_with_settings(engine, settings, datetime.now(UTC)).to_dict()
