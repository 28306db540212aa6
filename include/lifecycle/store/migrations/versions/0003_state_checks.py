"""CHECK constraints on ledger, run and test-send states; drop campaign_runs.dag_run_url

Revision ID: 0003_state_checks
Revises: 0002_customer_features

The warehouse refuses a state the code does not know. The values are the ones of
`lifecycle.store.states` when this revision was written: a later value needs a new revision.
dag_run_url was never written (the report derives the Airflow link from run_key).
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_state_checks"
down_revision = "0002_customer_features"
branch_labels = None
depends_on = None

LEDGER_STATUSES = ("planned", "skipped", "sending", "sent", "failed", "unknown")
LEDGER_REASONS = (
    # skipped
    "missing_email",
    "invalid_email",
    "no_consent",
    "suppressed",
    "holdout",
    "frequency_cap",
    "expired",
    "sandbox",
    # failed or unknown
    "rejected",
    "rate_limited",
    "render_error",
    "not_attempted",
    "gateway_timeout",
    "connection",
    "timeout",
    "disconnected",
    "interrupted",
    "transport_error",
)
RUN_STATUSES = ("running", "success", "failed", "stopped")
TEST_SEND_STATUSES = ("sent", "sandbox", "failed", "unknown")


def _in(column: str, values: tuple[str, ...]) -> str:
    listed = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({listed})"


def upgrade() -> None:
    with op.batch_alter_table("send_ledger", schema=None) as batch_op:
        batch_op.create_check_constraint(
            op.f("ck_send_ledger_status"), _in("status", LEDGER_STATUSES)
        )
        batch_op.create_check_constraint(
            op.f("ck_send_ledger_reason"), f"reason IS NULL OR {_in('reason', LEDGER_REASONS)}"
        )
    with op.batch_alter_table("campaign_runs", schema=None) as batch_op:
        batch_op.create_check_constraint(
            op.f("ck_campaign_runs_status"), _in("status", RUN_STATUSES)
        )
        batch_op.drop_column("dag_run_url")
    with op.batch_alter_table("test_sends", schema=None) as batch_op:
        batch_op.create_check_constraint(
            op.f("ck_test_sends_status"), _in("status", TEST_SEND_STATUSES)
        )


def downgrade() -> None:
    with op.batch_alter_table("test_sends", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_test_sends_status"), type_="check")
    with op.batch_alter_table("campaign_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dag_run_url", sa.String(length=500), nullable=True))
        batch_op.drop_constraint(op.f("ck_campaign_runs_status"), type_="check")
    with op.batch_alter_table("send_ledger", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_send_ledger_reason"), type_="check")
        batch_op.drop_constraint(op.f("ck_send_ledger_status"), type_="check")
