"""The offline transport: each message becomes an .eml file under the outbox directory.

Files are written atomically (temporary file, then rename) and named after the ledger row, so
a file either exists complete or not at all, and a row is never written twice under two names.
"""

from __future__ import annotations

import os
import re
import tempfile
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import formataddr, formatdate, make_msgid
from pathlib import Path

from lifecycle.delivery import BulkMessage, Envelope, Message
from lifecycle.store.ledger import Outcome
from lifecycle.store.states import LedgerStatus

# Structured headers made of <URI> lists (RFC 2369): never RFC 2047 encoded-words, which a
# strict mail client does not decode there. Folded only after a comma, and only if too long.
URI_LIST_HEADERS = frozenset({"list-unsubscribe"})
_URI_LIST = re.compile(r"\s*(<[^<>\s]*>)\s*(?:,|$)")


class OutboxPolicy(EmailPolicy):
    """`email.policy.default`, except that URI-list headers are written as they are."""

    def fold(self, name: str, value: str) -> str:
        return self._fold_uri_list(name, value) or super().fold(name, value)

    def fold_binary(self, name: str, value: str) -> bytes:
        folded = self._fold_uri_list(name, value)
        return folded.encode("ascii") if folded else super().fold_binary(name, value)

    def _fold_uri_list(self, name: str, value: str) -> str | None:
        text = str(value)
        if name.lower() not in URI_LIST_HEADERS or not text.isascii():
            return None
        uris = _URI_LIST.findall(text)
        if not uris or _URI_LIST.sub("", text).strip():
            return None  # not a plain list of <URI>s: the default folding
        limit = self.max_line_length or 998
        lines = [f"{name}: {uris[0]}"]
        for uri in uris[1:]:
            if len(lines[-1]) + len(", ") + len(uri) <= limit:
                lines[-1] += f", {uri}"
            else:
                lines[-1] += ","
                lines.append(f" {uri}")
        return self.linesep.join(lines) + self.linesep


OUTBOX_POLICY = OutboxPolicy()


def build_email(message: Message, envelope: Envelope) -> EmailMessage:
    email = EmailMessage(policy=OUTBOX_POLICY)
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
    max_recipients = 1  # one file per email: a shared body would gain nothing

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

    async def send_bulk(self, message: BulkMessage) -> list[Outcome]:
        raise NotImplementedError("the outbox takes one recipient per message (max_recipients)")

    async def close(self) -> None:
        return None
