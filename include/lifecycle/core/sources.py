"""The shop's source tables, read only through `include/sql/customers.sql` and `orders.sql`.

Each is a `text()` query with typed columns, used as a subquery, so the warehouse's own tables
can be mapped by editing SQL rather than code.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Date, FromClause, Integer, Numeric, String, column, text

from lifecycle.core.config import Settings
from lifecycle.store.sqltypes import UtcDateTime


def source_customers(settings: Settings) -> FromClause:
    sql = (settings.sql_dir / "customers.sql").read_text(encoding="utf-8")
    return (
        text(sql)
        .columns(
            column("customer_id", BigInteger),
            column("email", String),
            column("first_name", String),
            column("last_name", String),
            column("locale", String),
            column("timezone", String),
            column("birth_date", Date),
            column("signup_at", UtcDateTime),
            column("marketing_consent", Boolean),
            column("loyalty_points", Integer),
        )
        .subquery("c")
    )


def source_orders(settings: Settings, name: str = "o") -> FromClause:
    sql = (settings.sql_dir / "orders.sql").read_text(encoding="utf-8")
    return (
        text(sql)
        .columns(
            column("order_id", BigInteger),
            column("customer_id", BigInteger),
            column("placed_at", UtcDateTime),
            column("delivered_at", UtcDateTime),
            column("amount", Numeric(14, 2)),
            column("currency", String),
            column("status", String),
        )
        .subquery(name)
    )
