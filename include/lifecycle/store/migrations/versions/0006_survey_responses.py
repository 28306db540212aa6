"""survey_responses: answers to the feedback email's 0-10 rating links

Revision ID: 0006_survey_responses
Revises: 0005_unknown_resolution
"""

import sqlalchemy as sa
from alembic import op

import lifecycle.store.sqltypes

revision = "0006_survey_responses"
down_revision = "0005_unknown_resolution"
branch_labels = None
depends_on = None

UTC_DATETIME = lifecycle.store.sqltypes.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "survey_responses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("send_id", sa.BigInteger(), nullable=False),
        sa.Column("campaign_id", sa.String(length=64), nullable=False),
        sa.Column("occurrence_key", sa.String(length=128), nullable=False),
        sa.Column("customer_id", sa.BigInteger(), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("answered_at", UTC_DATETIME, nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.CheckConstraint("score BETWEEN 0 AND 10", name=op.f("ck_survey_responses_score")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_survey_responses")),
        sa.UniqueConstraint("send_id", name=op.f("uq_survey_responses_send_id")),
    )
    op.create_index(
        "ix_survey_responses_customer", "survey_responses", ["customer_id", "updated_at"]
    )
    op.create_index(
        "ix_survey_responses_campaign", "survey_responses", ["campaign_id", "answered_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_survey_responses_campaign", table_name="survey_responses")
    op.drop_index("ix_survey_responses_customer", table_name="survey_responses")
    op.drop_table("survey_responses")
