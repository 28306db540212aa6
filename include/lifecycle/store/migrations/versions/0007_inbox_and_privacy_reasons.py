"""Skip reasons duplicate_address and erased on the send ledger, its inbox column; resubscribes

Revision ID: 0007_inbox_and_privacy_reasons
Revises: 0006_survey_responses

One email per inbox skips the second customer of an inbox as `duplicate_address`; a privacy
erasure skips the erased person's rows as `erased`. ck_send_ledger_reason is replaced with the
full list of values (`lifecycle.store.states` when this revision was written).
send_ledger.inbox (the address trimmed and lower-cased, indexed with the campaign) is how
planning finds another customer's email to the same inbox; existing rows are filled in.
`resubscribes` holds the preference centre's topics chosen again, until SendGrid lifts them.
"""

import sqlalchemy as sa
from alembic import op

from lifecycle.store.sqltypes import UtcDateTime

revision = "0007_inbox_and_privacy_reasons"
down_revision = "0006_survey_responses"
branch_labels = None
depends_on = None

SKIP_REASONS = (
    "missing_email",
    "invalid_email",
    "no_consent",
    "suppressed",
    "holdout",
    "frequency_cap",
    "expired",
    "sandbox",
)
NEW_SKIP_REASONS = ("duplicate_address", "erased")
FAIL_REASONS = (
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


def _replace_reason_check(values: tuple[str, ...]) -> None:
    listed = ", ".join(f"'{value}'" for value in values)
    with op.batch_alter_table("send_ledger", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_send_ledger_reason"), type_="check")
        batch_op.create_check_constraint(
            op.f("ck_send_ledger_reason"), f"reason IS NULL OR reason IN ({listed})"
        )


def upgrade() -> None:
    _replace_reason_check((*SKIP_REASONS, *NEW_SKIP_REASONS, *FAIL_REASONS))
    with op.batch_alter_table("send_ledger", schema=None) as batch_op:
        batch_op.add_column(sa.Column("inbox", sa.String(length=320), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_send_ledger_campaign_inbox"), ["campaign_id", "inbox"], unique=False
        )
    op.execute("UPDATE send_ledger SET inbox = lower(trim(email)) WHERE email IS NOT NULL")
    op.create_table(
        "resubscribes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("created_at", UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_resubscribes")),
        sa.UniqueConstraint("email", "scope", name=op.f("uq_resubscribes_email_scope")),
    )


def downgrade() -> None:
    op.drop_table("resubscribes")
    with op.batch_alter_table("send_ledger", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_send_ledger_campaign_inbox"))
        batch_op.drop_column("inbox")
    # Rows with the new reasons stay skipped; the reason says less than it did.
    listed = ", ".join(f"'{value}'" for value in NEW_SKIP_REASONS)
    op.execute(f"UPDATE send_ledger SET reason = 'suppressed' WHERE reason IN ({listed})")
    _replace_reason_check((*SKIP_REASONS, *FAIL_REASONS))
