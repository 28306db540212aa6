"""The offline transport: each message becomes an .eml file under the outbox directory.

Files are written atomically (temporary file, then rename) and named after the ledger row, so
a file either exists complete or not at all, and a row is never written twice under two names.
"""

from __future__ import annotations

import os
import tempfile
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from pathlib import Path

from lifecycle.delivery import Envelope, Message
from lifecycle.store.ledger import Outcome
from lifecycle.store.states import LedgerStatus


def build_email(message: Message, envelope: Envelope) -> EmailMessage:
    email = EmailMessage()
    email["From"] = formataddr((envelope.sender_name or "", envelope.sender_email))
    email["To"] = formataddr((message.to_name or "", message.to_email))
    if envelope.reply_to_email:
        email["Reply-To"] = formataddr((envelope.reply_to_name or "", envelope.reply_to_email))
    email["Subject"] = message.subject
    email["Date"] = formatdate(usegmt=True)
    domain = envelope.sender_email.rpartition("@")[2] or "localhost"
    email["Message-ID"] = make_msgid(idstring=str(message.send_id), domain=domain)
    for name, value in message.headers.items():
        email[name] = value
    for name, value in message.custom_args.items():
        email[f"X-Lifecycle-{name.replace('_', '-').title()}"] = value
    email.set_content(message.text)
    email.add_alternative(message.html, subtype="html")
    return email


class OutboxTransport:
    throttled = False

    def __init__(self, directory: Path, envelope: Envelope) -> None:
        self.directory = directory
        self.envelope = envelope

    def __repr__(self) -> str:
        return f"OutboxTransport(directory={str(self.directory)!r})"

    async def send(self, message: Message) -> Outcome:
        email = build_email(message, self.envelope)
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.directory / f"{message.send_id}.eml"
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(email.as_bytes())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        message_id = str(email["Message-ID"]).strip("<>")[:64]
        return Outcome(message.send_id, LedgerStatus.SENT, message_id)

    async def close(self) -> None:
        return None
