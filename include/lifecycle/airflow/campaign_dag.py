"""`campaign_<id>`: one DAG per campaign spec, check_status → preflight → plan → plan_partition
(mapped over customer-id ranges, `planning.py`) → gather → [approve] → deliver → finalize.
`check_status` ends a real run of a draft campaign before anything is planned.

The tasks are thin: each reads its settings from the Airflow connections and calls one step
of the engine's pipeline (imported inside the task, so parsing only reads the YAML specs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, TriggerRule, dag, get_current_context, task
from airflow.sdk.definitions.callback import AsyncCallback
from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from lifecycle.airflow.approval import CampaignApproval
from lifecycle.airflow.connections import runtime_settings, warehouse_engine
from lifecycle.airflow.docs import campaign_doc_md
from lifecycle.airflow.errors import explained
from lifecycle.airflow.experiment_tasks import winner_phase
from lifecycle.airflow.notifier import (
    CampaignDeadlineNotifier,
    CampaignFailureNotifier,
    ReportedUpstream,
)
from lifecycle.airflow.params import run_as_of, run_options, trigger_params
from lifecycle.airflow.planning import planning_tasks, render_problem
from lifecycle.airflow.schedules import START_DATE, campaign_asset, campaign_schedule
from lifecycle.core.campaigns import CampaignSpec, SpecError, load_campaigns
from lifecycle.core.config import SENDGRID_POOL, load_settings
from lifecycle.run.rates import deliver_timeout

log = logging.getLogger(__name__)
PREFLIGHT_TIMEOUT = timedelta(minutes=10)
FINALIZE_TIMEOUT = timedelta(minutes=10)


def check_campaign_specs(directory: Path, templates_dir: Path | None = None) -> None:
    """Raise one `SpecError` naming every invalid spec in `directory`, a line each: the import
    error of `dags/campaign_specs.py`, a file without DAGs.

    Not an import error of `dags/campaigns.py`: Airflow marks every DAG of a file with an import
    error as stale with import errors (`_update_import_errors` in
    airflow/dag_processing/collection.py), and the scheduler creates no runs for those
    (`DagModel.dags_needing_dagruns`), so one broken spec would stop every campaign.
    """
    errors = load_campaigns(directory, templates_dir).errors
    if errors:
        header = "these campaigns have no DAG until their spec is fixed; the others run:"
        raise SpecError("\n".join([header, *errors.values()]))


def build_campaign_dag(spec: CampaignSpec) -> DAG:
    """`campaign_<id>`: preflight → plan → deliver (mapped over ledger batches) → finalize,
    with an approval step (`approval.CampaignApproval`) before deliver if the spec asks for one."""
    asset = campaign_asset(spec.id)
    default_args = {
        "owner": spec.owner,
        "retries": 3,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
        "on_failure_callback": [CampaignFailureNotifier(spec.id)],
    }
    if spec.queue:  # else Airflow's default queue, which airflow/policy.py may move at run time
        default_args["queue"] = spec.queue

    @dag(
        dag_id=spec.dag_id,
        dag_display_name=f"{spec.display_name} ({spec.status})",
        description=spec.description[:200],
        doc_md=campaign_doc_md(spec),
        schedule=campaign_schedule(spec),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=["lifecycle", "campaign", spec.status, *spec.tags],
        params=trigger_params(spec),
        default_args=default_args,
        deadline=_deadline(spec),
    )
    def campaign() -> None:
        @task(execution_timeout=PREFLIGHT_TIMEOUT)
        @explained
        def check_status() -> None:
            """A draft campaign only rehearses: a real run of it ends here, before planning."""
            if refused := draft_refusal(spec, get_current_context()):
                raise AirflowSkipException(refused)  # everything but finalize is skipped

        @task(execution_timeout=PREFLIGHT_TIMEOUT)
        @explained
        def preflight() -> str:
            """Spec, templates, warehouse and credentials are ready; fixes the run's as-of."""
            from lifecycle.run import preflight as phase

            context = get_current_context()
            # ValueError here is configuration: a bad as-of or warehouse connection.
            with fail_fast(phase.PreflightError, ValueError):
                as_of = run_as_of(context, run_options(context))
                settings = runtime_settings()
                phase.preflight(warehouse_engine(settings), spec, settings, as_of=as_of)
            return as_of.isoformat()

        @task(
            map_index_template="{{ batch_label }}",
            max_active_tis_per_dagrun=spec.delivery.max_active_batches,
            pool=SENDGRID_POOL,  # one pool per SendGrid account, shared by every campaign
            execution_timeout=deliver_timeout(spec, load_settings()),
        )
        @explained
        def deliver(campaign_run_id: int, batch: dict[str, int]) -> dict[str, Any]:
            """Render and send one ledger batch; rows are claimed, so a retry never re-sends."""
            from lifecycle.delivery import DeliveryStopped
            from lifecycle.run import deliver as phase
            from lifecycle.run.plan import Batch

            context = get_current_context()
            bounds = Batch.from_dict(batch)
            # map_index_template renders from the context: a key of ours, unknown to its type.
            context["batch_label"] = (  # type: ignore[typeddict-unknown-key]
                f"rows {bounds.first_id}–{bounds.last_id} ({bounds.size})"
            )
            ti = context["ti"]
            if refused := draft_refusal(spec, context):
                raise AirflowFailException(refused)  # made a draft after planning: rows wait
            settings = runtime_settings()
            with fail_fast(DeliveryStopped):  # SendGrid refused the API key: stop, do not retry
                result = phase.deliver(
                    warehouse_engine(settings),
                    spec,
                    settings,
                    run_id=campaign_run_id,
                    batch=bounds,
                    attempt=f"{ti.dag_id}/{ti.run_id}/{ti.map_index}/try{ti.try_number}",
                )
            return result.to_dict()

        @task(
            trigger_rule=TriggerRule.ALL_DONE, outlets=[asset], execution_timeout=FINALIZE_TIMEOUT
        )
        @explained
        def finalize(as_of: str) -> dict[str, Any]:
            """Count outcomes onto the campaign run row and announce them as an Asset event.

            Runs even when a delivery task failed, so the run's record is never left behind;
            it then fails itself, so the DAG run is failed and no Asset event is sent.
            """
            from lifecycle.run import finalize as phase
            from lifecycle.run.plan import abandon
            from lifecycle.store.states import RunStatus

            context = get_current_context()
            if refused := draft_refusal(spec, context):
                if context["dag_run"].run_type == "manual":
                    raise AirflowFailException(refused)  # someone asked for it: a failed run
                raise AirflowSkipException(refused)  # scheduled: a green run that did nothing
            ti = context["ti"]
            run_id = ti.xcom_pull(task_ids="plan", key="campaign_run_id")
            settings = runtime_settings()
            if run_id is None or ti.xcom_pull(task_ids="gather", key="planned") is None:
                if ti.xcom_pull(task_ids="plan", key="test_sends") is not None:
                    raise AirflowSkipException("test send only: no campaign run to finalize")
                abandon(warehouse_engine(settings), spec, run_key=context["run_id"])
                raise ReportedUpstream("an earlier task failed (see preflight or the plan tasks)")
            outcome = phase.finalize(
                warehouse_engine(settings), spec, run_id=run_id, settings=settings
            )
            if outcome.status == RunStatus.REJECTED:
                raise AirflowSkipException(
                    f"rejected by {outcome.counts.get('decided_by')}: nothing sent, "
                    f"{outcome.counts.get('released', 0):,} planned emails released"
                )
            if outcome.status == RunStatus.EXPIRED:
                raise AirflowFailException(_expired_problem(outcome.counts))
            if outcome.status != RunStatus.SUCCESS:
                raise AirflowFailException(_run_problem(spec.id, outcome.counts))
            counts = outcome.counts
            context["outlet_events"][asset].extra = {
                "campaign_id": spec.id,
                "run_id": run_id,
                "as_of": as_of,
                "dry_run": run_options(context).dry_run,
                "counts": counts,
            }
            return counts

        # TaskFlow passes XComArgs where the functions take their values (Airflow resolves them
        # at run time), which mypy cannot see: hence the ignores on the wiring below.
        as_of = preflight()
        check_status() >> as_of
        batches, run_id = planning_tasks(spec, as_of)
        delivered = deliver.partial(campaign_run_id=run_id).expand(batch=batches)
        if spec.needs_approval:  # a person answers between plan and deliver
            batches >> CampaignApproval(spec=spec) >> delivered
        if spec.experiment is not None:  # test slice first, then the winner to the rest
            delivered = winner_phase(spec, deliver, delivered, run_id, as_of)
        delivered >> finalize(as_of)  # type: ignore[arg-type]

    return campaign()


def _deadline(spec: CampaignSpec) -> DeadlineAlert | None:
    """An alert (run by the triggerer) when a run is not finished in time, if the spec sets one."""
    if spec.deadline_hours is None:
        return None
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(hours=spec.deadline_hours),
        callback=AsyncCallback(CampaignDeadlineNotifier, kwargs={"campaign_id": spec.id}),
    )


@contextmanager
def fail_fast(*problems: type[Exception]) -> Iterator[None]:
    """Problems a retry cannot fix (a bad option, template or API key) fail the task at once,
    with their message, instead of being retried with backoff."""
    try:
        yield
    except problems as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from None


def draft_refusal(spec: CampaignSpec, context: Mapping[str, Any]) -> str | None:
    """Why this run may not go on (a real run of a draft campaign), or None: dry runs and test
    sends of a draft are fine."""
    from lifecycle.run.draft import refusal

    try:
        options = run_options(context)
    except ValueError:
        return None  # preflight fails the run, naming the bad option
    if spec.live or options.dry_run or options.test_recipients:
        return None
    return refusal(spec)


# --- what went wrong, for the person reading the task log ---------------------------------
def _expired_problem(counts: Mapping[str, Any]) -> str:
    return (
        f"nobody approved the run in time: nothing was sent and its {counts['released']:,} "
        "planned emails were released. Trigger a new run and approve it in the Airflow UI "
        "(Required actions), or lengthen approval.expires_after_hours in the spec"
    )


def _run_problem(campaign_id: str, counts: Mapping[str, Any]) -> str:
    """What went wrong with a finalized run, and what a person should do about it."""
    from lifecycle.run.finalize import unknown_hint

    if counts.get("dry_run"):
        return render_problem(
            counts["render_errors"], counts["planned"], counts["render_error_examples"]
        )
    problems = []
    if counts.get("stopped"):
        problems.append(
            f"run stopped, nothing more was sent: {counts['stopped']}. Fix it, then trigger a "
            "new run: it takes over the emails left, inside each customer's send window"
        )
    elif counts["pending"]:
        problems.append(
            f"{counts['pending']:,} due emails were not delivered because a delivery task "
            "failed: trigger a new run (it takes them over inside each customer's send window), "
            "or clear the failed deliver tasks and finalize right away"
        )
    if counts["unknown"]:
        problems.append(unknown_hint(campaign_id, dict(counts)))
    if counts["failed"] and not counts["sent"]:
        problems.append(f"all {counts['failed']:,} emails failed (see the ledger's errors)")
    return "; ".join(problems)
