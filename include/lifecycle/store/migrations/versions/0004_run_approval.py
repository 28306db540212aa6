"""campaign_runs.status admits `rejected` and `expired` (a run that needed approval)

Revision ID: 0004_run_approval
Revises: 0003_state_checks

A campaign with `approval: required` waits for a person between plan and deliver; a rejected
or timed-out approval ends the run with one of these two states.
"""

from alembic import op

revision = "0004_run_approval"
down_revision = "0003_state_checks"
branch_labels = None
depends_on = None

BEFORE = ("running", "success", "failed", "stopped")
AFTER = (*BEFORE, "rejected", "expired")


def _in(column: str, values: tuple[str, ...]) -> str:
    listed = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({listed})"


def _replace_check(values: tuple[str, ...]) -> None:
    with op.batch_alter_table("campaign_runs", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_campaign_runs_status"), type_="check")
        batch_op.create_check_constraint(op.f("ck_campaign_runs_status"), _in("status", values))


def upgrade() -> None:
    _replace_check(AFTER)


def downgrade() -> None:
    op.execute("UPDATE campaign_runs SET status = 'failed' WHERE status IN ('rejected', 'expired')")
    _replace_check(BEFORE)
