"""The test-then-winner tasks of a campaign DAG whose spec has an `experiment`.

After the test slice is delivered: `tests_sent` fixes when its results are due,
`wait_for_results` waits deferred (in the triggerer: no worker slot is held), `pick_winner`
decides and records the variant for the rest (the decision is its XCom and log line, shown in
the Airflow UI), `plan_rest` plans everyone else with that variant and `deliver_rest` sends it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from airflow.providers.standard.sensors.date_time import DateTimeSensorAsync
from airflow.sdk import TriggerRule, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from lifecycle.airflow.connections import runtime_settings, warehouse_engine
from lifecycle.airflow.params import run_options
from lifecycle.core.campaigns import CampaignSpec

log = logging.getLogger(__name__)


def winner_phase(
    spec: CampaignSpec, deliver: Any, delivered: Any, campaign_run_id: Any, as_of: Any
) -> Any:
    """Add the winner tasks after the test slice's delivery (`delivered`, the mapped `deliver`
    task); returns `deliver_rest`."""

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def tests_sent() -> str:
        """When the test slice's results are read: the spec's wait after its delivery."""
        from lifecycle.run.experiment import results_due

        context = get_current_context()
        options = run_options(context)
        planned = context["ti"].xcom_pull(task_ids="plan", key="campaign_run_id")
        if planned is None or options.dry_run:
            raise AirflowSkipException("no real send (dry run or test send): nothing to test")
        due = results_due(spec, datetime.now(UTC))
        log.info("test slice sent; results are read at %s", due.isoformat())
        return due.isoformat()

    @task
    def pick_winner(campaign_run_id: int) -> dict[str, Any]:
        """The variant for the rest of the audience, with the test's figures and the reason."""
        from lifecycle.run.experiment import decide

        settings = runtime_settings()
        engine = warehouse_engine(settings)
        decision = decide(engine, spec, settings, run_id=campaign_run_id, now=datetime.now(UTC))
        log.info("winner %s (%s): %s", decision.winner, decision.chosen_by, decision.reason)
        for variant, figures in decision.figures.items():
            log.info("variant %s: %s", variant, figures)
        return decision.to_dict()

    @task
    def plan_rest(decision: dict[str, Any], as_of: str) -> list[dict[str, int]]:
        """Plan everyone outside the test slice with the winning variant."""
        from lifecycle.run import plan as phase

        context = get_current_context()
        settings = runtime_settings()
        result = phase.plan(
            warehouse_engine(settings),
            spec,
            settings,
            run_key=context["run_id"],
            as_of=datetime.fromisoformat(as_of),
            phase="rest",
            winner=decision["winner"],
        )
        log.info("planned %d emails with variant %s", result.planned, decision["winner"])
        return [batch.to_dict() for batch in result.batches]

    due = tests_sent()
    wait = DateTimeSensorAsync(
        task_id="wait_for_results",
        target_time="{{ ti.xcom_pull(task_ids='tests_sent') }}",
        doc_md="Waits for the test slice's results, deferred: no worker slot is held.",
    )
    decision = pick_winner(campaign_run_id)
    delivered >> due >> wait >> decision
    rest = plan_rest(decision, as_of)  # type: ignore[arg-type]  # XComArgs resolve at run time
    return (
        deliver.override(task_id="deliver_rest")
        .partial(campaign_run_id=campaign_run_id)
        .expand(batch=rest)
    )
