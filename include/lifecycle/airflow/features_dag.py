"""`customer_features`: the features snapshot every campaign segment reads, published as the
`customer_features` Asset that campaigns scheduled `after_features` run on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, CronTriggerTimetable, TriggerRule, dag, get_current_context, task

from lifecycle.airflow.connections import runtime_settings, warehouse_engine
from lifecycle.airflow.errors import explained
from lifecycle.airflow.params import as_of_param, parse_as_of, scheduled_for
from lifecycle.airflow.schedules import FEATURES_ASSET, FEATURES_CRON, START_DATE


def build_features_dag(cron: str = FEATURES_CRON) -> DAG:
    """`customer_features`: materialize the features snapshot, announce it as an Asset event.

    partition → materialize_range (mapped over customer-id ranges, PostgreSQL) → materialize
    (swaps the staged snapshot in, emits the Asset). On SQLite `partition` computes it whole.
    """

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
        @task
        @explained
        def partition() -> list[list[int | None]]:
            """PostgreSQL: empty the staging table, return the customer-id ranges to compute.
            SQLite: compute the whole snapshot here (one writer anyway); no range."""
            from lifecycle.core import features

            context = get_current_context()
            as_of = snapshot_as_of(context)
            settings = runtime_settings()
            engine = warehouse_engine(settings)
            if engine.dialect.name != "postgresql":
                snapshot = features.materialize(engine, as_of, settings)
                context["ti"].xcom_push(key="snapshot", value=snapshot_extra(snapshot))
                return []
            ranges = features.partitions(engine, as_of, settings, settings.partition_size)
            return [[r.first, r.last] for r in ranges]

        @task(map_index_template="{{ range_label }}")
        @explained
        def materialize_range(id_range: list[int | None]) -> int:
            """The features of one customer-id range, into the staging table."""
            from lifecycle.core import features
            from lifecycle.core.segments import IdRange

            context = get_current_context()
            first, last = id_range
            context["range_label"] = (  # type: ignore[typeddict-unknown-key]
                f"customers {'…' if first is None else first}–{'…' if last is None else last}"
            )
            settings = runtime_settings()
            return features.materialize_range(
                warehouse_engine(settings), snapshot_as_of(context), settings, IdRange(first, last)
            )

        @task(outlets=[FEATURES_ASSET], trigger_rule=TriggerRule.NONE_FAILED)
        @explained
        def materialize() -> dict[str, Any]:
            """Swap the staged snapshot in (SQLite: already done) and announce it."""
            from lifecycle.core import features

            context = get_current_context()
            extra = context["ti"].xcom_pull(task_ids="partition", key="snapshot")
            if extra is None:
                settings = runtime_settings()
                snapshot = features.publish(warehouse_engine(settings), snapshot_as_of(context))
                extra = snapshot_extra(snapshot)
            context["outlet_events"][FEATURES_ASSET].extra = extra
            return dict(extra)

        ranges = partition()
        materialize_range.expand(id_range=ranges) >> materialize()

    return customer_features()


def snapshot_as_of(context: Any) -> datetime:
    """The as-of a run computes: the `as_of` param, else the run's scheduled time."""
    as_of = parse_as_of(context["params"].get("as_of"))
    return as_of if as_of is not None else scheduled_for(context).astimezone(UTC)


def snapshot_extra(snapshot: Any) -> dict[str, Any]:
    return {
        "as_of": snapshot.as_of.isoformat(),
        "row_count": snapshot.row_count,
        "warnings": dict(snapshot.warnings),
    }
