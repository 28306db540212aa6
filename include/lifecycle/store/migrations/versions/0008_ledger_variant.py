"""send_ledger.variant: the A/B/n variant a row was planned with; campaign_runs.experiment:
the winner chosen after a test slice, its figures and the reason

Revision ID: 0008_ledger_variant
Revises: 0007_inbox_and_privacy_reasons
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_ledger_variant"
down_revision = "0007_inbox_and_privacy_reasons"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("send_ledger", schema=None) as batch_op:
        batch_op.add_column(sa.Column("variant", sa.String(length=32), nullable=True))
    with op.batch_alter_table("campaign_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("experiment", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("campaign_runs", schema=None) as batch_op:
        batch_op.drop_column("experiment")
    with op.batch_alter_table("send_ledger", schema=None) as batch_op:
        batch_op.drop_column("variant")
