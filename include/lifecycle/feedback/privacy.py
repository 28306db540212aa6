"""Privacy requests: everything the marketing tables hold about one address, exported or erased.

The person is found by address (trimmed, case-insensitive): their customer ids in the shop's
source table (read through `include/sql/customers.sql`) and in the send ledger, the events and
suppressions of the address, and every row keyed by those customer ids.

`erase` changes every marketing table in one transaction, as `TABLES` says for each: rows that
only describe the person are deleted; rows that count towards reports and keep "never send
twice" (ledger, events) lose the address and every personal field; the suppression list keeps
only the address's hash (`core.addresses.hashed`), so planning skips the person as `erased`
from then on. The source tables (customers, orders) belong to the company and are not touched.
A table added to `schema.marketing` must be named in `TABLES` or `NOT_PERSONAL` (a test checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    String,
    Table,
    delete,
    false,
    func,
    or_,
    select,
    update,
)

from lifecycle.core import addresses, policies
from lifecycle.core.config import Settings
from lifecycle.core.sources import source_customers
from lifecycle.feedback import suppressions as suppression_list
from lifecycle.store import schema
from lifecycle.store.states import LedgerStatus, SkipReason

# Marketing tables with no personal data: runs, feature snapshot summaries, timezone offsets.
NOT_PERSONAL = ("campaign_runs", "feature_snapshots", "tz_offsets")
# What `erase` does to the person's rows of each table.
TABLES = {
    "customer_features": "delete",
    "customer_features_next": "delete",  # a snapshot being built (features_dag on PostgreSQL)
    "send_ledger": "pseudonymise",
    "engagement_events": "pseudonymise",
    "suppressions": "delete",
    "resubscribes": "delete",
    "coupons": "delete",
    "test_sends": "delete",
    "survey_responses": "delete",
}
# An event keeps what reports count; its raw payload, bounce text and URL can hold the address.
EVENT_PERSONAL_FIELDS: dict[str, Any] = {
    "email": None,
    "payload": None,
    "reason": None,
    "url": None,
}


@dataclass(frozen=True)
class Person:
    email: str  # the inbox: trimmed, lower-cased
    customer_ids: list[int]
    send_ids: list[int]  # their ledger rows, which their events refer to


def _inbox_of(column: Any) -> ColumnElement[str]:
    return func.lower(func.trim(column), type_=String)


def find(conn: Connection, settings: Settings, email: str) -> Person:
    inbox = addresses.inbox(email)
    source = source_customers(settings)
    ledger = schema.send_ledger
    ids = set(conn.execute(select(source.c.customer_id).where(_inbox_of(source.c.email) == inbox)))
    ids |= set(conn.execute(select(ledger.c.customer_id).where(_inbox_of(ledger.c.email) == inbox)))
    customer_ids = sorted(int(row[0]) for row in ids)
    send_ids = conn.execute(
        select(ledger.c.id).where(ledger.c.customer_id.in_(customer_ids)).order_by(ledger.c.id)
    ).scalars()
    return Person(inbox, customer_ids, [int(i) for i in send_ids])


def _tables() -> dict[str, Table]:
    return {name: schema.marketing.tables[name] for name in TABLES}


def _rows_of(table: Table, person: Person) -> ColumnElement[bool]:
    """Which rows of `table` are the person's."""
    c = table.c
    if table.name == "resubscribes":
        return _inbox_of(c.email) == person.email
    if table.name == "suppressions":
        return or_(_inbox_of(c.email) == person.email, c.email == addresses.hashed(person.email))
    if table.name == "engagement_events":
        return or_(_inbox_of(c.email) == person.email, c.send_id.in_(person.send_ids))
    if "customer_id" in c:
        return c.customer_id.in_(person.customer_ids) if person.customer_ids else false()
    raise ValueError(f"no rule says which rows of {table.name} are a person's")


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def export(engine: Engine, settings: Settings, email: str) -> dict[str, Any]:
    """Everything held about the address, per marketing table, as JSON-ready values."""
    with engine.connect() as conn:
        person = find(conn, settings, email)
        held: dict[str, Any] = {"email": person.email, "customer_ids": person.customer_ids}
        for name, table in _tables().items():
            query = select(table).where(_rows_of(table, person)).order_by(*table.primary_key)
            held[name] = [
                {key: _json_value(value) for key, value in row.items()}
                for row in conn.execute(query).mappings()
            ]
    return held


def erase(engine: Engine, settings: Settings, email: str, at: datetime) -> dict[str, int]:
    """Erase the person in one transaction; per table, how many of their rows were changed."""
    changed: dict[str, int] = {}
    with engine.begin() as conn:
        person = find(conn, settings, email)
        for name, table in _tables().items():
            where = _rows_of(table, person)
            if TABLES[name] == "delete":
                changed[name] = conn.execute(delete(table).where(where)).rowcount
            else:
                changed[name] = _pseudonymise(conn, table, where)
        suppression_list.add(conn, [_hashed_suppression(person.email, at)])
    return changed


def _pseudonymise(conn: Connection, table: Table, where: ColumnElement[bool]) -> int:
    if table.name == "send_ledger":
        # Not sent yet: it never will be (the address is gone).
        conn.execute(
            update(table)
            .where(where, table.c.status == LedgerStatus.PLANNED)
            .values(status=LedgerStatus.SKIPPED, reason=SkipReason.ERASED, send_after=None)
        )
        personal: dict[str, Any] = {"email": None, "inbox": None, "context": {}, "error": None}
    else:
        personal = EVENT_PERSONAL_FIELDS
    return conn.execute(update(table).where(where).values(**personal)).rowcount


def forget_erased_events(conn: Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Webhook event rows, those of erased people without their personal fields (SendGrid
    still reports on emails sent before the erasure)."""
    erased = policies.erased_inboxes(conn, [row["email"] for row in rows if row["email"]])
    return [
        {**row, **EVENT_PERSONAL_FIELDS}
        if row["email"] and addresses.inbox(row["email"]) in erased
        else row
        for row in rows
    ]


def _hashed_suppression(email: str, at: datetime) -> dict[str, Any]:
    return {
        "email": addresses.hashed(email),
        "scope": "global",
        "reason": "erased",
        "source": "privacy",
        "created_at": at,
    }
