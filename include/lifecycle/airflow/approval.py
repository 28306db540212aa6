"""The approval step of a campaign with `approval: required`: Airflow's human-in-the-loop
`ApprovalOperator` between plan and deliver.

The approver answers on the task's "Required actions" page in the Airflow UI (or through the REST
API: PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails). They see
what the run would send; Approve lets the deliver tasks run; Reject, or no answer within the
spec's `expires_after_hours`, ends the campaign run `rejected` / `expired` with nothing sent and
its planned rows released (`lifecycle.run.approval.close`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk.configuration import conf
from airflow.sdk.exceptions import AirflowSkipException

from lifecycle.airflow.connections import runtime_settings, warehouse_engine
from lifecycle.core.campaigns import CampaignSpec

if TYPE_CHECKING:  # the run room loads pandas: tasks import it, parsing does not
    from lifecycle.run.approval import ApprovalSummary

TASK_ID = "approve"
PREVIEW_PATH = "/campaigns/runs/{run_id}/preview"  # the dashboard app, behind Airflow's login


class CampaignApproval(ApprovalOperator):
    """Asks a person to approve one campaign run; the body is the run's plan, written when the
    task starts (so it is never Jinja-rendered: a subject line is shown as it is).

    Never retried: a new try asks again, and Airflow erases the answer already given to the
    earlier one (`upsert_hitl_detail`), so the approver would be asked twice without knowing why
    while the run waits. A failed approval fails the run, and its alert says so.
    """

    def __init__(self, *, spec: CampaignSpec, **kwargs: Any) -> None:
        assert spec.approval is not None
        approvers = spec.approval.approvers
        super().__init__(
            task_id=TASK_ID,
            subject=f"Send campaign {spec.id}?",
            assigned_users=[{"id": user, "name": user} for user in approvers] or None,
            response_timeout=spec.approval.expires_after,
            **{**kwargs, "retries": 0},
        )
        self.spec = spec

    def execute(self, context: Any) -> Any:
        from lifecycle.run import approval

        run_id = context["ti"].xcom_pull(task_ids="plan", key="campaign_run_id")
        if run_id is None:
            raise AirflowSkipException("test send only: no campaign run to approve")
        settings = runtime_settings()
        summary = approval.summarize(
            warehouse_engine(settings), self.spec, settings, run_id=int(run_id)
        )
        if not summary.needs_answer:
            raise AirflowSkipException("nothing to send (or a dry run): nothing to approve")
        self.body = approval_body(self.spec, summary, preview_url(summary.run_id))
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        from lifecycle.run import approval
        from lifecycle.store.states import RunStatus

        timed_out = event.get("error_type") == "timeout"
        if timed_out or event.get("chosen_options") == [self.REJECT]:
            settings = runtime_settings()
            run_id = int(context["ti"].xcom_pull(task_ids="plan", key="campaign_run_id"))
            released = approval.close(
                warehouse_engine(settings),
                run_id=run_id,
                status=RunStatus.EXPIRED if timed_out else RunStatus.REJECTED,
                decided_by=None if timed_out else _user(event.get("responded_by_user")),
            )
            self.log.info(
                "campaign %s run %d %s: nothing sent, %d planned emails released",
                self.spec.id,
                run_id,
                "expired without an answer" if timed_out else "rejected",
                released,
            )
        if timed_out:
            self.skip(ti=context["ti"], tasks=context["task"].get_direct_relatives(upstream=False))
            return {"chosen_options": [], "expired": True}
        return super().execute_complete(context, event)


def _user(user: Mapping[str, Any] | None) -> str | None:
    return None if user is None else str(user.get("name") or user.get("id"))


def preview_url(run_id: int) -> str:
    base = (conf.get("api", "base_url", fallback=None) or "").rstrip("/")
    return base + PREVIEW_PATH.format(run_id=run_id)


def approval_body(spec: CampaignSpec, summary: ApprovalSummary, preview: str) -> str:
    """What the approver reads (Markdown) before answering."""
    skipped = ", ".join(f"{reason} {n:,}" for reason, n in sorted(summary.skipped.items()))
    coupons = (
        f"{summary.coupons:,} ({summary.discount_percent:g}% off)" if summary.coupons else "none"
    )
    hours = spec.approval.expires_after_hours if spec.approval else 0
    lines = [
        f"**{spec.description.strip()}**",
        "",
        f"- Audience: **{summary.audience:,}** customers",
        f"- To send: **{summary.planned:,}** emails ({summary.due_now:,} now, "
        f"{summary.waiting:,} waiting for the customer's send window)",
        f"- Skipped: {skipped or 'none'}",
        f"- Holdout (kept out to measure the uplift): {summary.holdout:,}",
        f"- Coupons to be issued: {coupons}",
        "",
        "Subject lines, as rendered:",
        "",
        *(f"> {subject}" + "\n" for subject in summary.subjects),
        f"[Rendered previews of the first emails]({preview})",
        "",
        f"Approve sends them. Reject, or no answer within {hours:g} h, ends the run with nothing "
        "sent; its emails are released and the next run plans them again.",
    ]
    return "\n".join(lines)
