"""The planning tasks of a campaign DAG: `plan` → `plan_partition` (mapped) → `gather`.

`plan` fixes the run (run row, expired, requeued and adopted rows) and cuts the audience into
customer-id ranges of `Settings.partition_size` members; `plan_partition` plans one range per
mapped task, on as many workers as are free; `gather` settles inboxes shared across ranges and
cuts the due rows into the batches `deliver` is mapped over. The run id is an XCom of `plan`,
the counts are XComs of `gather`.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, Literal

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from lifecycle.airflow.connections import runtime_settings, warehouse_engine
from lifecycle.airflow.errors import explained
from lifecycle.airflow.params import run_options
from lifecycle.core.campaigns import CampaignSpec

log = logging.getLogger(__name__)
PREPARE_TIMEOUT = timedelta(minutes=30)
PARTITION_TIMEOUT = timedelta(hours=2)  # a partition through every policy
GATHER_TIMEOUT = timedelta(minutes=30)


def planning_tasks(spec: CampaignSpec, as_of: Any) -> tuple[Any, Any]:
    """Add the planning tasks (inside a DAG); returns (the batch list to map `deliver` over, the
    campaign run id), both XComArgs."""

    @task(task_id="plan", execution_timeout=PREPARE_TIMEOUT)
    @explained
    def prepare(as_of: str) -> list[list[int | None]]:
        """Start the run and cut the audience into customer-id ranges; returns the ranges.

        A test send happens here instead, and returns no range: nothing else is planned.
        """
        from lifecycle.run import plan as phase
        from lifecycle.run.test_sends import send_tests

        context = get_current_context()
        options = run_options(context)
        settings = runtime_settings()
        engine = warehouse_engine(settings)
        ti = context["ti"]
        if options.test_recipients:
            sent = send_tests(
                engine,
                spec,
                settings,
                run_key=context["run_id"],
                as_of=datetime.fromisoformat(as_of),
                recipients=list(options.test_recipients),
                limit=options.limit or 3,
            )
            log.info("sent %d test emails to the test recipients; no customer got one", sent)
            ti.xcom_push(key="test_sends", value=sent)
            return []
        prepared = phase.prepare(
            engine,
            spec,
            settings,
            run_key=context["run_id"],
            as_of=datetime.fromisoformat(as_of),
            dry_run=options.dry_run,
            limit=options.limit,
            phase=test_phase(spec, options.dry_run),
        )
        log.info("planning in %d customer-id ranges", len(prepared.ranges))
        ti.xcom_push(key="campaign_run_id", value=prepared.run_id)
        ti.xcom_push(key="prepared", value=prepared.to_dict())
        return [[r.first, r.last] for r in prepared.ranges]

    @task(map_index_template="{{ range_label }}", execution_timeout=PARTITION_TIMEOUT)
    @explained
    def plan_partition(id_range: list[int | None]) -> dict[str, Any] | None:
        """Plan the audience members in one customer-id range (a dry run: count and render)."""
        from lifecycle.core.segments import IdRange
        from lifecycle.run import plan as phase

        context = get_current_context()
        first, last = id_range
        context["range_label"] = (  # type: ignore[typeddict-unknown-key]
            f"customers {'…' if first is None else first}–{'…' if last is None else last}"
        )
        prepared = phase.Prepared.from_dict(
            context["ti"].xcom_pull(task_ids="plan", key="prepared")
        )
        settings = runtime_settings()
        return phase.plan_partition(
            warehouse_engine(settings), spec, settings, prepared, IdRange(first, last)
        )

    @task(execution_timeout=GATHER_TIMEOUT)
    @explained
    def gather(rehearsals: Any) -> list[dict[str, int]]:
        """Settle inboxes shared across ranges, count, and return the batches to deliver."""
        from lifecycle.run import plan as phase

        context = get_current_context()
        ti = context["ti"]
        prepared = phase.Prepared.from_dict(ti.xcom_pull(task_ids="plan", key="prepared"))
        settings = runtime_settings()
        result = phase.gather(
            warehouse_engine(settings),
            spec,
            prepared,
            [counts for counts in rehearsals if counts is not None],
        )
        log.info("planned %d emails; skipped %s", result.planned, result.skipped or "none")
        ti.xcom_push(key="planned", value=result.planned)
        ti.xcom_push(key="skipped", value=result.skipped)
        ti.xcom_push(key="waiting", value=result.waiting)
        if result.render_errors:
            raise AirflowFailException(
                render_problem(result.render_errors, result.planned, result.render_error_examples)
            )
        return [batch.to_dict() for batch in result.batches]

    # TaskFlow passes XComArgs where the functions take their values: hence the ignores.
    ranges = prepare(as_of)
    run_id = ranges.operator.output["campaign_run_id"]  # type: ignore[attr-defined]
    rehearsals = plan_partition.expand(id_range=ranges)
    return gather(rehearsals), run_id


def test_phase(spec: CampaignSpec, dry_run: bool) -> Literal["test"] | None:
    """A real run of a spec with an experiment plans its test slice first."""
    return "test" if spec.experiment is not None and not dry_run else None


def render_problem(errors: int, planned: int, examples: list[str]) -> str:
    return f"dry run: {errors:,} of {planned:,} emails do not render: " + "; ".join(examples)
