"""SendGrid Event Webhook: signature check, validation and idempotent ingestion.

SendGrid delivers events at least once and in any order, in batches of up to 768 KB. A batch is
verified and validated as a whole: if any part is wrong nothing is stored, and SendGrid (which
retries non-2xx for 24 h) or an operator sees a clear 4xx. A valid batch is written in one
transaction with insert-ignore on `sg_event_id` and on a natural key, so replays and duplicate
deliveries change nothing. Events are linked to the ledger by our `custom_args` (`send_id`,
`campaign`) exactly as received: an event that arrives before its send is recorded is kept,
and reporting joins later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key
from sqlalchemy import Engine

from lifecycle.feedback import suppressions
from lifecycle.store import dialect
from lifecycle.store.schema import engagement_events

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
MAX_BODY_BYTES = 1 << 20  # SendGrid batches stay under 768 KB

# dropped reasons that mean the address itself is bad (others, e.g. spam content, are not)
DROPPED_SUPPRESSING = {"bounced address": "bounce", "invalid": "invalid"}


class WebhookRejected(ValueError):
    """The request is refused as a whole; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class IngestResult:
    received: int
    stored: int  # new events (the rest were duplicates of stored ones)
    suppressions: int  # new suppression rows

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


# --- signature ----------------------------------------------------------------------------
def load_public_key(public_key_b64: str) -> ec.EllipticCurvePublicKey:
    """The account's verification key: base64 DER SubjectPublicKeyInfo of a P-256 key."""
    try:
        key = load_der_public_key(base64.b64decode(public_key_b64, validate=True))
    except (ValueError, binascii.Error):
        raise ValueError("the SendGrid webhook public key is not base64 DER") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("the SendGrid webhook public key is not an ECDSA P-256 key")
    return key


def verify_signature(
    key: ec.EllipticCurvePublicKey,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    *,
    now: float,
    max_age_seconds: int,
) -> None:
    """Raise WebhookRejected unless `signature` signs timestamp + body and is fresh."""
    if not signature or not timestamp:
        raise WebhookRejected(401, "missing signature headers")
    try:
        signed_at = int(timestamp)
        raw_signature = base64.b64decode(signature, validate=True)
    except (ValueError, binascii.Error):
        raise WebhookRejected(401, "malformed signature headers") from None
    try:
        key.verify(raw_signature, timestamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise WebhookRejected(401, "signature does not match") from None
    if abs(now - signed_at) > max_age_seconds:
        raise WebhookRejected(401, f"signature timestamp outside the {max_age_seconds}s window")


# --- validation ---------------------------------------------------------------------------
def natural_key(event: dict[str, Any]) -> str:
    """Identity of an event without sg_event_id: sha256 of message, event, time, email, url."""
    parts = (
        event.get("sg_message_id"),
        event.get("event"),
        event.get("timestamp"),
        (event.get("email") or "").lower(),
        event.get("url"),
    )
    text = "\x1f".join("" if part is None else str(part) for part in parts)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _plain(value: Any, limit: int) -> bool:
    """A string a text column of `limit` chars can hold (PostgreSQL: no NUL, valid UTF-8)."""
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        return False
    return value.isascii() or not any("\ud800" <= char <= "\udfff" for char in value)


def _text(event: dict[str, Any], name: str, limit: int, index: int) -> str | None:
    value = event.get(name)
    if value is None:
        return None
    if not _plain(value, limit):
        raise WebhookRejected(400, f"event {index}: {name!r} must be a string of <= {limit} chars")
    return value


def _send_id(value: Any) -> int | None:
    """Our custom arg comes back as a string; anything but digits is not ours."""
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    return int(text) if text.isdigit() and len(text) < 19 else None


def to_row(event: Any, index: int, received_at: datetime) -> dict[str, Any]:
    """One validated engagement_events row from a raw webhook event."""
    if not isinstance(event, dict):
        raise WebhookRejected(400, f"event {index}: not a JSON object")
    name = _text(event, "event", 32, index)
    if not name:
        raise WebhookRejected(400, f"event {index}: 'event' is missing")
    timestamp = event.get("timestamp")
    if not isinstance(timestamp, int | float) or isinstance(timestamp, bool) or timestamp < 0:
        raise WebhookRejected(400, f"event {index}: 'timestamp' must be a unix time")
    try:
        occurred_at = datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, ValueError, OSError):
        raise WebhookRejected(400, f"event {index}: 'timestamp' out of range") from None
    message = _text(event, "sg_message_id", 1000, index)
    campaign = event.get("campaign") or event.get("campaign_id")
    return {
        "sg_event_id": _text(event, "sg_event_id", 128, index),
        "natural_key": natural_key(event),
        "event": name,
        "email": _text(event, "email", 320, index),
        "occurred_at": occurred_at,
        "send_id": _send_id(event.get("send_id")),
        "campaign_id": campaign if _plain(campaign, 64) else None,
        # sg_message_id = X-Message-Id (what the ledger stores) + "." + SendGrid's suffix
        "message_id": message.split(".", 1)[0][:128] if message else None,
        "url": _text(event, "url", 100_000, index),
        "reason": _text(event, "reason", 100_000, index),
        "simulated": False,
        "payload": event,
        "received_at": received_at,
    }


def _no_constants(name: str) -> None:
    raise WebhookRejected(400, f"body is not JSON: {name} is not a JSON number")


def parse_batch(body: bytes, received_at: datetime) -> list[dict[str, Any]]:
    """engagement_events rows for a webhook body, or WebhookRejected (nothing partial)."""
    if len(body) > MAX_BODY_BYTES:
        raise WebhookRejected(413, f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        events = json.loads(body, parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise WebhookRejected(400, "body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise WebhookRejected(400, f"body is not JSON: {exc.msg} at {exc.pos}") from None
    except RecursionError:
        raise WebhookRejected(400, "body is nested too deeply") from None
    if not isinstance(events, list):
        raise WebhookRejected(400, "body must be a JSON array of events")
    return [to_row(event, index, received_at) for index, event in enumerate(events)]


# --- ingestion ----------------------------------------------------------------------------
def suppression_for(row: dict[str, Any]) -> dict[str, Any] | None:
    """The suppression an event implies, if any (blocks and other drops imply none)."""
    payload, email = row["payload"], row["email"]
    if not email:
        return None
    event = row["event"]
    scope, reason = "global", None
    if event == "bounce" and payload.get("type", "bounce") == "bounce":
        reason = "bounce"
    elif event == "dropped":
        reason = DROPPED_SUPPRESSING.get(str(row["reason"] or "").strip().lower())
    elif event in ("spamreport", "unsubscribe"):
        reason = event
    elif event == "group_unsubscribe" and isinstance(payload.get("asm_group_id"), int):
        scope, reason = f"group:{payload['asm_group_id']}", "group_unsubscribe"
    if reason is None:
        return None
    return suppressions.row(email, scope, reason, "webhook", row["occurred_at"])


def _unique(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """First occurrence per sg_event_id and per natural key within one batch."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for row in rows:
        keys = {("n", row["natural_key"])}
        if row["sg_event_id"]:
            keys.add(("s", row["sg_event_id"]))
        if keys.isdisjoint(seen):
            kept.append(row)
        seen |= keys
    return kept


def ingest(engine: Engine, rows: list[dict[str, Any]]) -> IngestResult:
    """Store a parsed batch in one transaction; replays and duplicates change nothing."""
    unique = _unique(rows)
    implied = [s for s in map(suppression_for, unique) if s is not None]
    with engine.begin() as conn:
        stored = 0
        if unique:
            statement = (
                dialect.insert(conn, engagement_events)
                .on_conflict_do_nothing()
                .returning(engagement_events.c.id)
            )
            stored = len(conn.execute(statement, unique).all())
        added = suppressions.add(conn, implied)
    return IngestResult(received=len(rows), stored=stored, suppressions=added)


def ingest_body(engine: Engine, body: bytes, received_at: datetime) -> IngestResult:
    """Parse and ingest one webhook body (the signature is checked before this)."""
    return ingest(engine, parse_batch(body, received_at))
