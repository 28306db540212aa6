"""`retention_report`: the daily campaign and retention report, written to the task log.

The same figures as `lifecycle report` and the Campaigns dashboard (which computes them live);
this DAG keeps a dated record in the logs and returns the headline numbers as a small XCom.
"""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

from airflow.sdk import DAG, CronTriggerTimetable, Param, dag, get_current_context, task

from lifecycle.airflow.connections import runtime_settings, warehouse_engine
from lifecycle.airflow.errors import explained
from lifecycle.airflow.schedules import START_DATE


def build_report_dag() -> DAG:
    """`retention_report`: one `report` task every morning at 06:30 UTC."""

    @dag(
        dag_id="retention_report",
        description="Campaign funnels, conversions, holdout uplift and monthly retention KPIs.",
        doc_md=(
            "# retention_report\n\nEvery morning (06:30 UTC): per campaign the funnel, orders "
            "and revenue within `conversion_days` after each email, uplift against the holdout "
            "group with a 95% interval, and CRR, churn, repeat purchase rate and lifetime value "
            "by month. The report is in the task log; the Campaigns page shows the same "
            "figures live."
        ),
        schedule=CronTriggerTimetable("30 6 * * *", timezone="UTC"),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=["lifecycle", "reporting"],
        params={
            "conversion_days": Param(
                7, type="integer", minimum=1, maximum=90, title="Conversion window (days)"
            ),
        },
        default_args={"owner": "marketing", "retries": 1, "retry_delay": timedelta(minutes=2)},
    )
    def retention_report() -> None:
        @task
        @explained
        def report() -> dict[str, Any]:
            from lifecycle.reporting.export import format_table
            from lifecycle.reporting.report import build_report

            context = get_current_context()
            as_of = context["dag_run"].run_after.astimezone(UTC)
            settings = runtime_settings()
            built = build_report(
                warehouse_engine(settings),
                settings,
                as_of=as_of,
                conversion_days=int(context["params"]["conversion_days"]),
            )
            print(format_table(built))
            total = built.total
            return {
                "as_of": as_of.isoformat(),
                "campaigns": len(built.campaigns),
                "sent": total.funnel["sent"],
                "conversions": total.conversions,
                "revenue": total.revenue,
                "simulated_events": built.simulated_events,
            }

        report()

    return retention_report()
