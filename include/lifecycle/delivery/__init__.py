"""Transports that hand one rendered email to SendGrid or the local outbox.

A transport's `send` returns a `ledger.Outcome` for every message and raises `DeliveryStopped`
only when continuing would fail every row (SendGrid answered 401/403). SendGrid's transport also
sends a `BulkMessage` (one body, many recipients) with `send_bulk`: one outcome per recipient.
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


@dataclass(frozen=True)
class Personalization:
    """One recipient of a `BulkMessage`: what differs from the others."""

    send_id: int
    to_email: str
    to_name: str | None
    subject: str
    headers: dict[str, str]
    custom_args: dict[str, str]
    substitutions: dict[str, str]  # tag -> this recipient's value, as the body part outputs it


@dataclass(frozen=True)
class BulkMessage:
    """One body for many recipients; SendGrid puts each one's substitutions in place of the
    tags of `text` and `html`."""

    text: str
    html: str
    personalizations: tuple[Personalization, ...]

    @property
    def send_ids(self) -> list[int]:
        return [p.send_id for p in self.personalizations]


class Transport(Protocol):
    throttled: bool  # whether the campaign's rate limit applies (not to files on disk)
    max_recipients: int  # per request: above 1, `send_bulk` takes a `BulkMessage`

    async def send(self, message: Message) -> Outcome: ...

    async def send_bulk(self, message: BulkMessage) -> list[Outcome]: ...

    async def close(self) -> None: ...
