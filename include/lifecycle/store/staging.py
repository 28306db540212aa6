"""Large inserts on PostgreSQL: COPY the rows into a temporary staging table, then one
`INSERT ... SELECT` with the statement's own ON CONFLICT clause.

psycopg's `executemany` sends one INSERT per row, and PostgreSQL checks each statement's CHECK
constraints on its own; planning 200,000 emails spent most of its time there. COPY streams the
rows in one command and the final INSERT moves them in one statement, in the order given (the
ledger's ids follow it: delivery batches are ranges of consecutive ids).
"""

from __future__ import annotations

from typing import Any

from psycopg import sql
from sqlalchemy import BigInteger, Column, Connection, Insert, MetaData, Table, select

ORDINAL = "staging_ordinal"


def supported(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg"


def copy_then_insert(conn: Connection, statement: Insert, rows: list[dict[str, Any]]) -> None:
    """Run `statement` (an INSERT, possibly ON CONFLICT ...) for `rows`, which share one set of
    keys, through a staging table that lives only inside this call."""
    target = statement.table
    assert isinstance(target, Table)
    columns = [target.c[name] for name in rows[0]]
    stage = Table(
        f"{target.name}_staging",
        MetaData(),
        Column(ORDINAL, BigInteger, nullable=False),
        *(Column(column.name, column.type) for column in columns),
        prefixes=["TEMPORARY"],
    )
    stage.create(conn)  # if anything below fails, the transaction's rollback drops it
    _copy(conn, stage, columns, rows)
    moved = select(*(stage.c[column.name] for column in columns)).order_by(stage.c[ORDINAL])
    conn.execute(statement.from_select([column.name for column in columns], moved))
    stage.drop(conn)


def _copy(
    conn: Connection, stage: Table, columns: list[Column[Any]], rows: list[dict[str, Any]]
) -> None:
    processors = [column.type.bind_processor(conn.dialect) for column in columns]
    names = [ORDINAL, *(column.name for column in columns)]
    command = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(stage.name), sql.SQL(", ").join(map(sql.Identifier, names))
    )
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy(command) as copy:
        for ordinal, row in enumerate(rows):
            values = (row[column.name] for column in columns)
            copy.write_row(
                [
                    ordinal,
                    *(
                        p(v) if p and v is not None else v
                        for p, v in zip(processors, values, strict=True)
                    ),
                ]
            )
