"""customer_features_next: the staging table a partitioned features snapshot is built in

Revision ID: 0009_features_next
Revises: 0008_ledger_variant

On PostgreSQL the customer_features DAG computes the snapshot in mapped tasks over customer-id
ranges into this table, then copies it into customer_features in one transaction, so readers
never see a half-built snapshot. Same columns as customer_features.
"""

import sqlalchemy as sa
from alembic import op

import lifecycle.store.sqltypes

revision = "0009_features_next"
down_revision = "0008_ledger_variant"
branch_labels = None
depends_on = None

UTC_DATETIME = lifecycle.store.sqltypes.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "customer_features_next",
        sa.Column("customer_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("as_of", UTC_DATETIME, nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("timezone_valid", sa.Boolean(), nullable=False),
        sa.Column("local_date", sa.Date(), nullable=False),
        sa.Column("email_valid", sa.Boolean(), nullable=False),
        sa.Column("email_reason", sa.String(length=32), nullable=True),
        sa.Column("signup_at", UTC_DATETIME, nullable=False),
        sa.Column("tenure_days", sa.Integer(), nullable=False),
        sa.Column("first_order_at", UTC_DATETIME, nullable=True),
        sa.Column("last_order_at", UTC_DATETIME, nullable=True),
        sa.Column("order_count", sa.Integer(), nullable=False),
        sa.Column("total_spend", sa.Float(), nullable=False),
        sa.Column("avg_spend", sa.Float(), nullable=True),
        sa.Column("days_since_last_order", sa.Integer(), nullable=True),
        sa.Column("delivered_orders_30d", sa.Integer(), nullable=False),
        sa.Column("loyalty_points", sa.Integer(), nullable=False),
        sa.Column("loyalty_tier", sa.String(length=16), nullable=True),
        sa.Column("birth_date", sa.Date(), nullable=True),
        sa.Column("next_birthday", sa.Date(), nullable=True),
        sa.Column("rfm_recency", sa.Integer(), nullable=True),
        sa.Column("rfm_frequency", sa.Integer(), nullable=True),
        sa.Column("rfm_monetary", sa.Integer(), nullable=True),
        sa.Column("rfm_score", sa.String(length=3), nullable=True),
        sa.Column("rfm_segment", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_customer_features_next")),
    )


def downgrade() -> None:
    op.drop_table("customer_features_next")
