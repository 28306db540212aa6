"""The one place that picks PostgreSQL's or SQLite's INSERT, for ON CONFLICT clauses."""

from __future__ import annotations

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.dialects import postgresql, sqlite


def insert(bind: Connection | Engine, table: Table) -> postgresql.Insert | sqlite.Insert:
    """`INSERT INTO table` in the bind's dialect, so `.on_conflict_do_nothing()` and
    `.on_conflict_do_update()` work on both warehouses (their signatures match)."""
    if bind.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
