"""Transports that hand one rendered email to SendGrid or the local outbox.

A transport's `send` returns a `ledger.Outcome` for every message and raises `DeliveryStopped`
only when continuing would fail every row (SendGrid answered 401/403).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from lifecycle.store.ledger import Outcome


class DeliveryStopped(RuntimeError):
    """The provider refuses our credentials or sender: stop the batch. Holds no secret."""


@dataclass(frozen=True)
class Envelope:
    """What every message of a campaign shares."""

    sender_email: str
    sender_name: str | None = None
    reply_to_email: str | None = None
    reply_to_name: str | None = None
    categories: tuple[str, ...] = ()
    asm_group_id: int | None = None
    sandbox_mode: bool = False
    click_tracking: bool | None = None  # None: the SendGrid account's setting
    open_tracking: bool | None = None


@dataclass(frozen=True)
class Message:
    send_id: int  # send_ledger.id, our correlation id in custom_args
    to_email: str
    to_name: str | None
    subject: str
    text: str
    html: str
    headers: dict[str, str] = field(default_factory=dict)
    custom_args: dict[str, str] = field(default_factory=dict)


class Transport(Protocol):
    throttled: bool  # whether the campaign's rate limit applies (not to files on disk)

    async def send(self, message: Message) -> Outcome: ...

    async def close(self) -> None: ...
