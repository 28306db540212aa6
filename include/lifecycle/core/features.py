"""The `customer_features` snapshot: every customer's features at one as-of instant.

`materialize` computes the features defined in `lifecycle.core.feature_sql` in the warehouse,
stores them with their RFM scores (`lifecycle.core.rfm`) and records the snapshot in
`feature_snapshots`; `latest_snapshot` says which as-of the stored one is for. On PostgreSQL the
features DAG computes it in parts instead: `partitions`, `materialize_range` per customer-id
range (into `customer_features_next`), then `publish` swaps it in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    case,
    delete,
    func,
    insert,
    literal,
    not_,
    select,
    text,
)

from lifecycle.core.config import Settings
from lifecycle.core.feature_sql import FEATURES, feature_query, prepare_timezones
from lifecycle.core.rfm import score_rfm
from lifecycle.core.segments import IdRange, ranges_of
from lifecycle.core.sources import source_customers
from lifecycle.store.schema import customer_features, customer_features_next, feature_snapshots
from lifecycle.store.sqltypes import UtcDateTime


@dataclass(frozen=True)
class FeatureSnapshot:
    as_of: datetime
    row_count: int
    warnings: dict[str, int]


SNAPSHOT_FEATURES = [
    column.name
    for column in customer_features.c
    if column.name in FEATURES and FEATURES[column.name].level != "rfm"
]


def materialize(engine: Engine, as_of: datetime, settings: Settings) -> FeatureSnapshot:
    """Replace the `customer_features` snapshot with every customer's features at `as_of`."""
    as_of = as_of.astimezone(UTC)
    known = prepare_timezones(engine, settings)
    query = feature_query(settings, as_of, known, {"customer", "orders"})
    rows = query.select(SNAPSHOT_FEATURES).add_columns(literal(as_of, UtcDateTime))
    with engine.begin() as conn:
        _empty(conn)
        conn.execute(insert(customer_features).from_select([*SNAPSHOT_FEATURES, "as_of"], rows))
        return _record(conn, as_of)


def _record(conn: Connection, as_of: datetime) -> FeatureSnapshot:
    """Score the stored snapshot's RFM and log it in `feature_snapshots`."""
    score_rfm(conn)
    warnings = _warnings(conn)
    row_count = conn.execute(select(func.count()).select_from(customer_features)).scalar_one()
    conn.execute(
        insert(feature_snapshots).values(
            as_of=as_of,
            row_count=row_count,
            warnings=warnings,
            computed_at=datetime.now(UTC),
        )
    )
    return FeatureSnapshot(as_of=as_of, row_count=row_count, warnings=warnings)


# --- partitioned (PostgreSQL): ranges → staging table → one swap --------------------------
def partitions(engine: Engine, as_of: datetime, settings: Settings, size: int) -> list[IdRange]:
    """Start a partitioned snapshot: the staging table emptied, the customers who had signed
    up by `as_of` cut into id ranges of `size` (counted in the warehouse)."""
    as_of = as_of.astimezone(UTC)
    with engine.begin() as conn:
        _empty(conn, customer_features_next)
    c = source_customers(settings)
    ids = select(c.c.customer_id.label("customer_id")).where(c.c.signup_at <= as_of)
    return ranges_of(engine, ids, size)


def materialize_range(
    engine: Engine, as_of: datetime, settings: Settings, customer_ids: IdRange
) -> int:
    """The features of the customers in `customer_ids` into the staging table (a retry
    replaces what an earlier try wrote); returns the rows written."""
    as_of = as_of.astimezone(UTC)
    known = prepare_timezones(engine, settings)
    query = feature_query(settings, as_of, known, {"customer", "orders"})
    rows = (
        query.select(SNAPSHOT_FEATURES)
        .add_columns(literal(as_of, UtcDateTime))
        .where(customer_ids.condition(query.columns["customer_id"]))
    )
    staged = customer_features_next
    with engine.begin() as conn:
        conn.execute(delete(staged).where(customer_ids.condition(staged.c.customer_id)))
        conn.execute(insert(staged).from_select([*SNAPSHOT_FEATURES, "as_of"], rows))
        written = select(func.count()).where(customer_ids.condition(staged.c.customer_id))
        return int(conn.execute(written).scalar_one())


def publish(engine: Engine, as_of: datetime) -> FeatureSnapshot:
    """The staged snapshot becomes `customer_features`, scored, in one transaction: readers
    see the old snapshot until it commits, then the new one whole."""
    as_of = as_of.astimezone(UTC)
    names = [column.name for column in customer_features_next.c]
    staged = select(*(customer_features_next.c[name] for name in names))
    with engine.begin() as conn:
        _empty(conn)
        conn.execute(insert(customer_features).from_select(names, staged))
        _empty(conn, customer_features_next)
        return _record(conn, as_of)


def _empty(conn: Connection, table: Table = customer_features) -> None:
    # TRUNCATE is transactional on PostgreSQL and spares deleting a million rows one by one;
    # SQLite optimises an unqualified DELETE the same way.
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"TRUNCATE {table.name}"))  # one of our two table names, not input
    else:
        conn.execute(delete(table))


def _warnings(conn: Connection) -> dict[str, int]:
    f = customer_features.c
    counts = conn.execute(
        select(
            func.sum(case((not_(f.timezone_valid), 1), else_=0)),
            func.sum(case((f.email_reason == "missing_email", 1), else_=0)),
            func.sum(case((f.email_reason == "malformed_email", 1), else_=0)),
        )
    ).one()
    names = ("unknown_timezone", "missing_email", "malformed_email")
    return {name: int(n or 0) for name, n in zip(names, counts, strict=True) if n}


def latest_snapshot(engine: Engine) -> FeatureSnapshot | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(feature_snapshots).order_by(feature_snapshots.c.id.desc()).limit(1)
        ).first()
    if row is None:
        return None
    return FeatureSnapshot(as_of=row.as_of, row_count=row.row_count, warnings=row.warnings)
