"""`customer_features`: the features snapshot every campaign segment reads, published as the
`customer_features` Asset that campaigns scheduled `after_features` run on."""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

from airflow.sdk import DAG, CronTriggerTimetable, dag, get_current_context, task

from lifecycle.airflow.connections import runtime_settings, warehouse_engine
from lifecycle.airflow.errors import explained
from lifecycle.airflow.params import as_of_param, parse_as_of, scheduled_for
from lifecycle.airflow.schedules import FEATURES_ASSET, FEATURES_CRON, START_DATE


def build_features_dag(cron: str = FEATURES_CRON) -> DAG:
    """`customer_features`: materialize the features snapshot, announce it as an Asset event."""

    @dag(
        dag_id="customer_features",
        description="Recompute customer features from the warehouse for the campaigns.",
        doc_md=(
            "# customer_features\n\nRecomputes the per-customer features every campaign "
            f"segment reads (cron `{cron}`, UTC) and emits the `{FEATURES_ASSET.uri}` Asset "
            "with `as_of` and `row_count`. Campaigns scheduled `after_features` run on it "
            "and use its `as_of`."
        ),
        schedule=CronTriggerTimetable(cron, timezone="UTC"),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=["lifecycle", "features"],
        params={"as_of": as_of_param("Compute the features as of this moment (default: now).")},
        default_args={
            "owner": "data",
            "retries": 2,
            "retry_delay": timedelta(minutes=1),
            "retry_exponential_backoff": True,
        },
    )
    def customer_features() -> None:
        @task(outlets=[FEATURES_ASSET])
        @explained
        def materialize() -> dict[str, Any]:
            from lifecycle.core import features

            context = get_current_context()
            as_of = parse_as_of(context["params"].get("as_of"))
            if as_of is None:
                as_of = scheduled_for(context).astimezone(UTC)
            settings = runtime_settings()
            snapshot = features.materialize(warehouse_engine(settings), as_of, settings)
            extra: dict[str, Any] = {
                "as_of": snapshot.as_of.isoformat(),
                "row_count": snapshot.row_count,
                "warnings": dict(snapshot.warnings),
            }
            context["outlet_events"][FEATURES_ASSET].extra = extra
            return extra

        materialize()

    return customer_features()
