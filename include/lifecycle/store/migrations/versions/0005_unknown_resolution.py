"""send_ledger: the evidence that resolved an `unknown` row; empty sg_event_id becomes NULL

Revision ID: 0005_unknown_resolution
Revises: 0004_run_approval

An `unknown` row that SendGrid's own events show it accepted becomes `sent`, and keeps which
event proved it (`resolved_event_id`, `resolved_by`) and when it occurred (`resolved_at`).
An empty `sg_event_id` was stored as "" and then deduplicated every later event without one:
it is NULL now (the natural key identifies such events).
"""

import sqlalchemy as sa
from alembic import op

import lifecycle.store.sqltypes

revision = "0005_unknown_resolution"
down_revision = "0004_run_approval"
branch_labels = None
depends_on = None

UTC_DATETIME = lifecycle.store.sqltypes.UtcDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("send_ledger", schema=None) as batch_op:
        batch_op.add_column(sa.Column("resolved_event_id", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("resolved_by", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("resolved_at", UTC_DATETIME, nullable=True))
    op.execute("UPDATE engagement_events SET sg_event_id = NULL WHERE sg_event_id = ''")


def downgrade() -> None:
    with op.batch_alter_table("send_ledger", schema=None) as batch_op:
        batch_op.drop_column("resolved_at")
        batch_op.drop_column("resolved_by")
        batch_op.drop_column("resolved_event_id")
