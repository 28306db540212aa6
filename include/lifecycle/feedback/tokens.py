"""Signed, opaque link tokens: what unsubscribe and survey links carry.

A token is a small payload and its itsdangerous signature (HMAC-SHA256): the ledger row's id
(`send_id`), and for a rating link the score, never the customer: no email address, name or
customer id is in the URL. The page that receives a token looks the row up (`recipient`).
Each kind of link signs with its own salt, so a survey token is no unsubscribe token.

Secrets rotate: `Settings.configured_secrets` lists them newest first; the first signs, every
one verifies. Without any configured secret (the embedded default) one is generated once under
`home`, unless tasks run on many hosts (a non-local executor): then `NoSharedSecret`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
from dataclasses import dataclass

from itsdangerous import BadData, Signer
from sqlalchemy import Engine, select

from lifecycle.core.config import Settings
from lifecycle.store.schema import send_ledger

GENERATED_SECRET_FILE = "unsubscribe.secret"
LOCAL_SECRET_NOTE = (
    "# LOCAL ONLY: generated for this machine's embedded default. Links signed with it fail on "
    "any other host; a deployment sets LIFECYCLE_TOKEN_SECRETS (or LIFECYCLE_UNSUBSCRIBE_SECRET) "
    "on every host."
)


class InvalidToken(ValueError):
    """Tampered, foreign (unknown secret), expired or malformed token. Holds no secret."""


class NoSharedSecret(RuntimeError):
    """No secret is configured and tasks run on many hosts: a generated one would differ."""


@dataclass(frozen=True)
class Recipient:
    """The ledger row a token refers to: the email as it was sent."""

    send_id: int
    customer_id: int
    campaign_id: str
    occurrence_key: str
    email: str | None
    locale: str | None


def secrets_for(settings: Settings) -> list[bytes]:
    """The secrets that verify, newest first (the first one signs)."""
    configured = settings.configured_secrets
    if configured:
        return [secret.encode("utf-8") for secret in configured]
    if settings.runs_on_many_hosts:
        raise NoSharedSecret(
            f"set LIFECYCLE_TOKEN_SECRETS or LIFECYCLE_UNSUBSCRIBE_SECRET on every host: "
            f"{settings.executor} runs tasks on many hosts, and links signed with a secret "
            "generated on one fail on the others"
        )
    path = settings.home / GENERATED_SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{LOCAL_SECRET_NOTE}\n{secrets.token_urlsafe(32)}\n")
    lines = (line.strip() for line in path.read_text().splitlines())
    return [next(line for line in lines if line and not line.startswith("#")).encode("utf-8")]


@functools.lru_cache(maxsize=32)
def _signer(keys: tuple[bytes, ...], purpose: str) -> Signer:
    # itsdangerous signs with the LAST key of its list and tries them all.
    return Signer(
        list(reversed(keys)),
        salt=f"lifecycle.{purpose}",
        digest_method=hashlib.sha256,
        key_derivation="hmac",
    )


def sign(settings: Settings, purpose: str, *fields: int) -> str:
    """`fields` (ids, a score) and their signature, e.g. '1234_9.<43 characters>'."""
    payload = "_".join(str(field) for field in fields)
    return _signer(tuple(secrets_for(settings)), purpose).sign(payload).decode("ascii")


def load(settings: Settings, purpose: str, token: str, count: int) -> tuple[int, ...]:
    """The `count` fields of a token signed for `purpose` by one of the secrets."""
    try:
        payload = _signer(tuple(secrets_for(settings)), purpose).unsign(token).decode("ascii")
        fields = tuple(int(field) for field in payload.split("_"))
    except (BadData, ValueError):
        raise InvalidToken(f"{purpose} token is malformed or not signed by us") from None
    if len(fields) != count:
        raise InvalidToken(f"{purpose} token does not hold {count} fields")
    return fields


def recipient(engine: Engine, send_id: int) -> Recipient | None:
    """The ledger row `send_id`, or None (never sent, or erased)."""
    ledger = send_ledger.c
    query = select(
        ledger.id,
        ledger.customer_id,
        ledger.campaign_id,
        ledger.occurrence_key,
        ledger.email,
        ledger.locale,
    ).where(ledger.id == send_id)
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return None if row is None else Recipient(*row)
