"""The preference centre's choices, stored as suppressions.

Not receiving a topic is a group suppression (scope `group:<asm id>`, source `link`), pushed to
SendGrid's group by the suppression sync; choosing it again deletes ours and leaves a
`resubscribes` row until the sync has lifted it at SendGrid too. "Unsubscribe from all" is the
global unsubscribe. Addresses are compared as inboxes (trimmed, case-insensitive).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, String, delete, func, select

from lifecycle.core import addresses
from lifecycle.core.preferences import Topic, Topics
from lifecycle.feedback import suppressions as suppression_list
from lifecycle.store import dialect
from lifecycle.store.schema import resubscribes, suppressions


@dataclass(frozen=True)
class Choices:
    everything: bool  # unsubscribed from all email
    receives: dict[str, bool]  # topic id → still receives it


def _of(column: Any, email: str) -> ColumnElement[bool]:
    return func.lower(func.trim(column), type_=String) == addresses.inbox(email)


def current(engine: Engine, topics: Topics, email: str) -> Choices:
    with engine.connect() as conn:
        query = select(suppressions.c.scope).where(_of(suppressions.c.email, email))
        scopes = set(conn.execute(query).scalars())
    return Choices("global" in scopes, {t.id: t.scope not in scopes for t in topics.topics})


def save(engine: Engine, topics: Topics, email: str, receives: set[str], at: datetime) -> None:
    """The topics in `receives` are received from now on, the others not."""
    with engine.begin() as conn:
        for topic in topics.topics:
            if topic.id in receives:
                _resubscribe(conn, topic.scope, email, at)
            else:
                _unsubscribe(conn, topic.scope, email, at)


def unsubscribe_group(engine: Engine, email: str, group_id: int | None, at: datetime) -> None:
    """One click: no more email of this unsubscribe group (or of any, without a group)."""
    with engine.begin() as conn:
        _unsubscribe(conn, "global" if group_id is None else f"group:{group_id}", email, at)


def topic_of(topics: Topics, group_id: int | None) -> Topic | None:
    return topics.by_group(group_id)


def _unsubscribe(conn: Connection, scope: str, email: str, at: datetime) -> None:
    conn.execute(
        delete(resubscribes).where(_of(resubscribes.c.email, email), resubscribes.c.scope == scope)
    )
    reason = "unsubscribe" if scope == "global" else "group_unsubscribe"
    suppression_list.add(conn, [suppression_list.row(email, scope, reason, "link", at)])


def _resubscribe(conn: Connection, scope: str, email: str, at: datetime) -> None:
    lifted = conn.execute(
        delete(suppressions).where(_of(suppressions.c.email, email), suppressions.c.scope == scope)
    ).rowcount
    if lifted:
        row = {"email": addresses.inbox(email), "scope": scope, "created_at": at}
        conn.execute(dialect.insert(conn, resubscribes).on_conflict_do_nothing(), [row])
