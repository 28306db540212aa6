"""Every table, declared once with SQLAlchemy Core.

Two metadata objects, because the two kinds of tables have different owners:

* `source` — tables a real company already has (customers, orders). The demo creates them;
  in production the engine reads them only through the SQL files in `include/sql/`.
* `marketing` — the tables this project owns, created and upgraded by Alembic
  (`lifecycle db upgrade`). A schema change here needs a migration in `migrations/versions/`.

All times are UTC instants (`UtcDateTime`). State columns accept only their enum's values
(`lifecycle.store.states`), enforced by CHECK constraints.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    Float,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from lifecycle.store.sqltypes import UtcDateTime
from lifecycle.store.states import FailReason, LedgerStatus, RunStatus, SkipReason, TestSendStatus

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _one_of(column: str, values: Iterable[str], *, nullable: bool = False) -> CheckConstraint:
    """CHECK that `column` holds one of `values` (or NULL), named ck_<table>_<column>.

    Adding a value to a state enum needs a migration that replaces the constraint.
    """
    listed = ", ".join(f"'{value}'" for value in values)
    allowed = f"{column} IN ({listed})"
    condition = f"{column} IS NULL OR {allowed}" if nullable else allowed
    return CheckConstraint(condition, name=column)


# --- source tables (the company's own; the demo creates them) -----------------------------
source = MetaData(naming_convention=NAMING)

customers = Table(
    "customers",
    source,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("email", String(320)),
    Column("first_name", String(100)),
    Column("last_name", String(100)),
    Column("locale", String(16)),
    Column("timezone", String(64)),
    Column("birth_date", Date),
    Column("signup_at", UtcDateTime, nullable=False),
    Column("marketing_consent", Boolean, nullable=False),
    Column("loyalty_points", Integer, nullable=False, server_default="0"),
)

orders = Table(
    "orders",
    source,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("customer_id", BigInteger, nullable=False),
    Column("placed_at", UtcDateTime, nullable=False),
    Column("delivered_at", UtcDateTime),
    Column("amount", Numeric(12, 2), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("status", String(16), nullable=False),  # placed, delivered, cancelled, returned
    # The UTM parameters of the link the order came through, when the shop records them.
    Column("utm_source", String(255)),
    Column("utm_medium", String(255)),
    Column("utm_campaign", String(255)),
    Column("utm_content", String(255)),
    Index("ix_orders_customer_id_placed_at", "customer_id", "placed_at"),
)

# --- marketing tables (ours; Alembic-managed) ---------------------------------------------
marketing = MetaData(naming_convention=NAMING)

campaign_runs = Table(
    "campaign_runs",
    marketing,
    Column("id", Integer, primary_key=True),
    Column("campaign_id", String(64), nullable=False),
    # Identity of the run that is stable across Airflow retries (the DAG run id, or one the CLI
    # makes): finalize and plan upsert on it, so a retried task never creates a second run row.
    Column("run_key", String(250), nullable=False),
    Column("as_of", UtcDateTime, nullable=False),
    Column("dry_run", Boolean, nullable=False, server_default="0"),
    Column("status", String(16), nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime),
    Column("counts", JSON),  # {"planned": n, "sent": n, "skipped": {"reason": n}, ...}
    # test-then-winner: the variant chosen for the rest, the test's figures and the reason
    Column("experiment", JSON),
    UniqueConstraint("campaign_id", "run_key"),
    _one_of("status", RunStatus),
)

# One row per (campaign, occurrence key, customer): "the same email" is planned once, ever.
send_ledger = Table(
    "send_ledger",
    marketing,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("campaign_id", String(64), nullable=False),
    Column("occurrence_key", String(128), nullable=False),
    Column("customer_id", BigInteger, nullable=False),
    # campaign_runs.id of the run that owns the row now: the run that planned it, or a later
    # run that adopted it (waiting for the send window, or re-planned after a retryable failure)
    Column("run_id", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", String(64)),  # why skipped, failed or unknown
    Column("template", String(128), nullable=False),
    Column("email", String(320)),
    # the email's inbox: trimmed, lower-cased (one email per inbox, issue 14)
    Column("inbox", String(320)),
    Column("locale", String(16)),
    Column("timezone", String(64)),
    Column("context", JSON),  # per-recipient template variables (first name, order id, tier...)
    Column("planned_at", UtcDateTime, nullable=False),
    Column("send_after", UtcDateTime),  # earliest send time (customer's local send window)
    Column("expires_at", UtcDateTime),  # not sent after this (e.g. end of the birthday)
    Column("claimed_at", UtcDateTime),
    Column("claimed_by", String(250)),  # the delivery attempt that claimed the row
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("sent_at", UtcDateTime),
    Column("message_id", String(64)),
    Column("http_status", Integer),
    Column("error", Text),
    Column("retryable", Boolean),
    Column("variant", String(32)),  # the A/B/n variant sent (spec `variants`); NULL without
    # An `unknown` row that SendGrid's events showed it accepted (now `sent`): the proving
    # engagement_events row, its event name and when it occurred (migration 0005).
    Column("resolved_event_id", BigInteger),
    Column("resolved_by", String(32)),
    Column("resolved_at", UtcDateTime),
    UniqueConstraint("campaign_id", "occurrence_key", "customer_id"),
    _one_of("status", LedgerStatus),
    _one_of("reason", [*SkipReason, *FailReason], nullable=True),
    Index("ix_send_ledger_campaign_status", "campaign_id", "status", "id"),
    Index("ix_send_ledger_customer_sent", "customer_id", "sent_at"),
    Index("ix_send_ledger_message_id", "message_id"),
    Index("ix_send_ledger_run_id", "run_id", "status"),
    Index("ix_send_ledger_campaign_inbox", "campaign_id", "inbox"),
)

# Emails rendered for a real customer but delivered only to internal test recipients.
test_sends = Table(
    "test_sends",
    marketing,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, nullable=False),
    Column("campaign_id", String(64), nullable=False),
    Column("customer_id", BigInteger, nullable=False),
    Column("recipient", String(320), nullable=False),
    Column("status", String(16), nullable=False),
    Column("message_id", String(64)),
    Column("error", Text),
    Column("sent_at", UtcDateTime, nullable=False),
    UniqueConstraint("run_id", "customer_id", "recipient"),
    _one_of("status", TestSendStatus),
)

engagement_events = Table(
    "engagement_events",
    marketing,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("sg_event_id", String(128), unique=True),
    # Fallback identity when sg_event_id is missing or duplicated under another id.
    Column("natural_key", String(64), nullable=False, unique=True),
    Column("event", String(32), nullable=False),
    Column("email", String(320)),
    Column("occurred_at", UtcDateTime, nullable=False),
    Column("send_id", BigInteger),  # send_ledger.id from our custom_args
    Column("campaign_id", String(64)),
    Column("message_id", String(128)),
    Column("url", Text),
    Column("reason", Text),
    Column("simulated", Boolean, nullable=False, server_default="0"),
    Column("payload", JSON),
    Column("received_at", UtcDateTime, nullable=False),
    Index("ix_engagement_events_send_id", "send_id", "event"),
    Index("ix_engagement_events_campaign", "campaign_id", "event"),
)

suppressions = Table(
    "suppressions",
    marketing,
    Column("id", Integer, primary_key=True),
    Column("email", String(320), nullable=False),  # lower-cased
    Column("scope", String(32), nullable=False),  # "global" or "group:<asm id>"
    # unsubscribe, bounce, spamreport, invalid, group_unsubscribe, manual
    Column("reason", String(32), nullable=False),
    Column("source", String(32), nullable=False),  # link, webhook, sync, manual
    Column("created_at", UtcDateTime, nullable=False),
    Column("pushed_at", UtcDateTime),  # when our own unsubscribe reached SendGrid
    UniqueConstraint("email", "scope"),
)

# Topics chosen again on the preference page whose SendGrid group suppression is still to be
# lifted: the suppression sync deletes it at SendGrid, then the row (issue 14).
resubscribes = Table(
    "resubscribes",
    marketing,
    Column("id", Integer, primary_key=True),
    Column("email", String(320), nullable=False),  # lower-cased
    Column("scope", String(32), nullable=False),  # "group:<asm id>"
    Column("created_at", UtcDateTime, nullable=False),
    UniqueConstraint("email", "scope"),
)

coupons = Table(
    "coupons",
    marketing,
    Column("id", Integer, primary_key=True),
    Column("code", String(32), nullable=False, unique=True),
    Column("campaign_id", String(64), nullable=False),
    Column("customer_id", BigInteger, nullable=False),
    Column("occurrence_key", String(128), nullable=False),  # e.g. the birthday year
    Column("discount_percent", Float, nullable=False),
    Column("issued_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("redeemed_at", UtcDateTime),
    UniqueConstraint("campaign_id", "customer_id", "occurrence_key"),
)

# One answer per surveyed email (ledger row): a second answer changes the score, never adds a row.
survey_responses = Table(
    "survey_responses",
    marketing,
    Column("id", Integer, primary_key=True),
    Column("send_id", BigInteger, nullable=False, unique=True),  # send_ledger.id surveyed
    Column("campaign_id", String(64), nullable=False),
    Column("occurrence_key", String(128), nullable=False),  # e.g. the order id
    Column("customer_id", BigInteger, nullable=False),
    Column("score", Integer, nullable=False),
    Column("comment", Text),  # the customer's own words: personal data
    Column("answered_at", UtcDateTime, nullable=False),  # first answer
    Column("updated_at", UtcDateTime, nullable=False),  # latest change of score or comment
    CheckConstraint("score BETWEEN 0 AND 10", name="score"),
    Index("ix_survey_responses_customer", "customer_id", "updated_at"),
    Index("ix_survey_responses_campaign", "campaign_id", "answered_at"),
)


# --- customer features (issue 3) ----------------------------------------------------------
# The latest snapshot of every customer's features, replaced by each `features.materialize`.
def _feature_columns() -> list[Column[Any]]:
    return [
        Column("customer_id", BigInteger, primary_key=True, autoincrement=False),
        Column("as_of", UtcDateTime, nullable=False),
        Column("timezone", String(64), nullable=False),  # effective: "UTC" when unknown
        Column("timezone_valid", Boolean, nullable=False),
        Column("local_date", Date, nullable=False),
        Column("email_valid", Boolean, nullable=False),
        Column("email_reason", String(32)),  # missing_email, malformed_email
        Column("signup_at", UtcDateTime, nullable=False),
        Column("tenure_days", Integer, nullable=False),
        Column("first_order_at", UtcDateTime),
        Column("last_order_at", UtcDateTime),
        Column("order_count", Integer, nullable=False),
        Column("total_spend", Float, nullable=False),
        Column("avg_spend", Float),
        Column("days_since_last_order", Integer),
        Column("delivered_orders_30d", Integer, nullable=False),
        Column("loyalty_points", Integer, nullable=False),
        Column("loyalty_tier", String(16)),
        Column("birth_date", Date),
        Column("next_birthday", Date),
        Column("rfm_recency", Integer),
        Column("rfm_frequency", Integer),
        Column("rfm_monetary", Integer),
        Column("rfm_score", String(3)),
        Column("rfm_segment", String(32)),
    ]


customer_features = Table("customer_features", marketing, *_feature_columns())
# A partitioned snapshot is built here, then copied into customer_features in one transaction.
customer_features_next = Table("customer_features_next", marketing, *_feature_columns())

# One row per materialized snapshot: when, how many customers, and what looked wrong.
feature_snapshots = Table(
    "feature_snapshots",
    marketing,
    Column("id", Integer, primary_key=True),
    Column("as_of", UtcDateTime, nullable=False),
    Column("row_count", Integer, nullable=False),
    Column("warnings", JSON, nullable=False),
    Column("computed_at", UtcDateTime, nullable=False),
)

# Periods of constant UTC offset per IANA timezone (see lifecycle.core.localtime): SQLite has no
# timezone support, so local dates are computed by joining this table on both backends.
tz_offsets = Table(
    "tz_offsets",
    marketing,
    Column("timezone", String(64), primary_key=True),
    Column("starts_at", UtcDateTime, primary_key=True),
    Column("offset_seconds", Integer, nullable=False),
)
