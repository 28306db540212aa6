"""Unsubscribe links: an opaque token per email (`lifecycle.feedback.tokens`), resolved to the
address it was sent to through the ledger.

Tokens do not expire: an unsubscribe link must keep working for years. Links sent before the
opaque format, `base64url(customer_id:campaign_id:email).base64url(hmac_sha256)`, still verify
against the same secrets until `Settings.legacy_tokens_until` (if set) has passed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import date

from sqlalchemy import Engine

from lifecycle.core.config import Settings
from lifecycle.feedback import tokens
from lifecycle.feedback.tokens import InvalidToken as InvalidToken  # what callers catch

URL_PATH = "/lifecycle/unsubscribe/"
PURPOSE = "unsubscribe"


@dataclass(frozen=True)
class Unsubscribe:
    customer_id: int
    campaign_id: str
    email: str
    send_id: int | None  # the ledger row; None for a link in the old format


def token_for(settings: Settings, send_id: int) -> str:
    """The token of the email that is ledger row `send_id`."""
    return tokens.sign(settings, PURPOSE, send_id)


def unsubscribe_url(settings: Settings, token: str) -> str:
    return f"{settings.public_url.rstrip('/')}{URL_PATH}{token}"


def verify(settings: Settings, engine: Engine, token: str, today: date) -> Unsubscribe:
    """Who a token unsubscribes; InvalidToken if it is not ours or names no email we sent."""
    try:
        (send_id,) = tokens.load(settings, PURPOSE, token, 1)
    except InvalidToken:
        return _legacy(settings, token, today)
    found = tokens.recipient(engine, send_id)
    if found is None or not found.email:
        raise InvalidToken("unsubscribe token names no email we sent")
    return Unsubscribe(found.customer_id, found.campaign_id, found.email, send_id)


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _legacy(settings: Settings, token: str, today: date) -> Unsubscribe:
    try:
        payload_part, signature_part = token.split(".")
        payload, signature = _unb64(payload_part), _unb64(signature_part)
        customer_id, campaign_id, email = payload.decode().split(":", 2)
        parsed = Unsubscribe(int(customer_id), campaign_id, email, None)
    except (ValueError, TypeError):
        raise InvalidToken("malformed unsubscribe token") from None
    signed = any(
        hmac.compare_digest(signature, hmac.new(secret, payload, hashlib.sha256).digest())
        for secret in tokens.secrets_for(settings)
    )
    if not signed:
        raise InvalidToken("unsubscribe token signature does not match")
    if settings.legacy_tokens_until is not None and today > settings.legacy_tokens_until:
        raise InvalidToken("unsubscribe link in the old format has expired")
    return parsed
