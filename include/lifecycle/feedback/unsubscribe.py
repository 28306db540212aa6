"""Signed unsubscribe tokens: one per recipient and campaign, verifiable without a lookup.

A token is `base64url(payload).base64url(hmac_sha256(secret, payload))` where the payload is
`customer_id:campaign_id:email`. The email is bound in so that a token cannot be replayed for
another address. Tokens do not expire: an unsubscribe link must keep working for years.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

from lifecycle.core.config import Settings

URL_PATH = "/lifecycle/unsubscribe/"


class InvalidToken(ValueError):
    """Tampered, foreign (other secret) or malformed token. The message holds no secret."""


@dataclass(frozen=True)
class Unsubscribe:
    customer_id: int
    campaign_id: str
    email: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


LOCAL_SECRET_NOTE = (
    "# LOCAL ONLY: generated for this machine's embedded default. Links signed with it fail on "
    "any other host; a deployment sets LIFECYCLE_UNSUBSCRIBE_SECRET on every host."
)


def _secret(settings: Settings) -> bytes:
    """The configured secret, or for the embedded default one generated once under home."""
    if settings.unsubscribe_secret:
        return settings.unsubscribe_secret.encode("utf-8")
    path = settings.home / "unsubscribe.secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{LOCAL_SECRET_NOTE}\n{secrets.token_urlsafe(32)}\n")
    lines = path.read_text().splitlines()
    secret = next(line.strip() for line in lines if line.strip() and not line.startswith("#"))
    return secret.encode("utf-8")


def make_token(secret: bytes, customer_id: int, campaign_id: str, email: str) -> str:
    payload = f"{customer_id}:{campaign_id}:{email.strip().lower()}".encode()
    signature = hmac.new(secret, payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(signature)}"


def verify_token(secret: bytes, token: str) -> Unsubscribe:
    try:
        payload_part, signature_part = token.split(".")
        payload, signature = _unb64(payload_part), _unb64(signature_part)
    except (ValueError, TypeError):
        raise InvalidToken("malformed unsubscribe token") from None
    expected = hmac.new(secret, payload, hashlib.sha256).digest()
    if not hmac.compare_digest(signature, expected):
        raise InvalidToken("unsubscribe token signature does not match")
    customer_id, campaign_id, email = payload.decode().split(":", 2)
    return Unsubscribe(int(customer_id), campaign_id, email)


def token_for(settings: Settings, customer_id: int, campaign_id: str, email: str) -> str:
    return make_token(_secret(settings), customer_id, campaign_id, email)


def verify(settings: Settings, token: str) -> Unsubscribe:
    return verify_token(_secret(settings), token)


def unsubscribe_url(settings: Settings, token: str) -> str:
    return f"{settings.public_url.rstrip('/')}{URL_PATH}{token}"
