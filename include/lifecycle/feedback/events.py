"""SendGrid Event Webhook: signature check, validation and idempotent ingestion.

SendGrid delivers events at least once and in any order, in batches of up to 768 KB. A batch is
verified and validated as a whole: if any part is wrong nothing is stored, and SendGrid (which
retries non-2xx for 24 h) or an operator sees a clear 4xx. A valid batch is written in one
transaction with insert-ignore on `sg_event_id` and on a natural key, so replays and duplicate
deliveries change nothing. Events are linked to the ledger by our `custom_args` (`send_id`,
`campaign`) exactly as received: an event that arrives before its send is recorded is kept,
and reporting joins later. An event for an `unknown` row resolves it (`store.unknown`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key
from sqlalchemy import Engine

from lifecycle.feedback import privacy, suppressions
from lifecycle.store import dialect, unknown
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
    resolved_unknown: int = 0  # `unknown` ledger rows these events showed SendGrid accepted

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
# Every field is checked before anything is stored, against what the warehouse can hold on
# both backends: PostgreSQL text refuses NUL and lone surrogates (not UTF-8), JSON refuses
# infinities, each column has its length or range, and the payload is stored whole.
FIRST_YEAR, LAST_YEAR = 1970, 2200  # event times a campaign can mean (as `--as-of`)
LATEST_TIMESTAMP = datetime(LAST_YEAR + 1, 1, 1, tzinfo=UTC).timestamp()
MAX_DEPTH = 32  # JSON nesting within one field (SendGrid's are flat or lists of strings)
MAX_GROUP_ID = 2**31 - 1  # SendGrid's ASM group ids are 32-bit; scope "group:<id>" fits 32
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


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


def _invalid(index: int, field: str, problem: str) -> WebhookRejected:
    """400 naming the event and the field (a hostile field name is cut and escaped)."""
    return WebhookRejected(400, f"event {index}: {field[:40]!a} {problem}")


def _problem(value: Any) -> str | None:
    """What the warehouse could not hold in a JSON value (keys too), if anything. Iterative,
    and depth-limited: a value nested as deep as the parser allows would exhaust the stack
    of the serializer that stores it."""
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth > MAX_DEPTH:
            return f"is nested deeper than {MAX_DEPTH} levels"
        if isinstance(item, str) and _UNSTORABLE.search(item):
            return "holds a NUL or a lone surrogate"
        if isinstance(item, float) and not math.isfinite(item):
            return "holds an infinite number"
        if isinstance(item, dict):
            pending += [(part, depth + 1) for part in (*item.keys(), *item.values())]
        elif isinstance(item, list):
            pending += [(part, depth + 1) for part in item]
    return None


def _check_storable(event: dict[str, Any], index: int) -> None:
    for field, value in event.items():
        problem = _problem(field) or _problem(value)
        if problem:
            raise _invalid(index, field, problem)


def _text(event: dict[str, Any], field: str, limit: int, index: int) -> str | None:
    value = event.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(index, field, "must be a string")
    if len(value) > limit:
        raise _invalid(index, field, f"is longer than {limit} characters")
    return value


def _occurred_at(event: dict[str, Any], index: int) -> datetime:
    timestamp = event.get("timestamp")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
        raise _invalid(index, "timestamp", "must be a unix time")
    if not 0 <= timestamp < LATEST_TIMESTAMP:
        raise _invalid(index, "timestamp", f"is outside the years {FIRST_YEAR}..{LAST_YEAR}")
    return datetime.fromtimestamp(timestamp, UTC)


def _send_id(event: dict[str, Any], index: int) -> int | None:
    """Our custom arg comes back as a string; anything but ASCII digits that fit a ledger id
    is not ours (another sender's), but a value no custom arg can be is malformed."""
    value = event.get("send_id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _invalid(index, "send_id", "must be a string")
    text = str(value)
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None


def _campaign(event: dict[str, Any], index: int) -> str | None:
    """Our custom arg `campaign` (or `campaign_id`); one longer than our ids is not ours."""
    for field in ("campaign", "campaign_id"):
        if event.get(field) is not None and not isinstance(event[field], str):
            raise _invalid(index, field, "must be a string")
    campaign = event.get("campaign") or event.get("campaign_id")
    return campaign if campaign and len(campaign) <= 64 else None


def _check_group_id(event: dict[str, Any], index: int) -> None:
    value = event.get("asm_group_id")
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_GROUP_ID:
        raise _invalid(index, "asm_group_id", f"must be a whole number 1..{MAX_GROUP_ID}")


def to_row(event: Any, index: int, received_at: datetime) -> dict[str, Any]:
    """One validated engagement_events row from a raw webhook event."""
    if not isinstance(event, dict):
        raise WebhookRejected(400, f"event {index}: not a JSON object")
    _check_storable(event, index)
    name = _text(event, "event", 32, index)
    if not name:
        raise _invalid(index, "event", "is missing")
    _check_group_id(event, index)
    message = _text(event, "sg_message_id", 1000, index)
    return {
        # "" is no id: stored as NULL, or it would deduplicate every later event without one
        "sg_event_id": _text(event, "sg_event_id", 128, index) or None,
        "event": name,
        "email": _text(event, "email", 320, index),
        "occurred_at": _occurred_at(event, index),
        "send_id": _send_id(event, index),
        "campaign_id": _campaign(event, index),
        # sg_message_id = X-Message-Id (what the ledger stores) + "." + SendGrid's suffix
        "message_id": message.split(".", 1)[0][:128] if message else None,
        "url": _text(event, "url", 100_000, index),
        "reason": _text(event, "reason", 100_000, index),
        "simulated": False,
        "payload": event,
        "received_at": received_at,
        "natural_key": natural_key(event),  # last: once the fields it hashes are checked
    }


def _no_constants(name: str) -> None:
    raise WebhookRejected(400, f"body is not JSON: {name} is not a JSON number")


def parse_batch(body: bytes, received_at: datetime) -> list[dict[str, Any]]:
    """engagement_events rows for a webhook body, or WebhookRejected (nothing partial)."""
    if len(body) > MAX_BODY_BYTES:
        raise WebhookRejected(413, f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        events = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise WebhookRejected(400, "body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise WebhookRejected(400, f"body is not JSON: {exc.msg} at {exc.pos}") from None
    except ValueError:  # an integer past Python's 4300-digit conversion limit
        raise WebhookRejected(400, "body is not JSON: a number has too many digits") from None
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
    elif event == "group_unsubscribe":
        # Without its group (never seen from SendGrid, but signed) the customer still asked
        # out of something: suppressed globally rather than mailed again.
        group = payload.get("asm_group_id")
        scope = f"group:{group}" if isinstance(group, int) else "global"
        reason = "group_unsubscribe"
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
        unique = privacy.forget_erased_events(conn, unique)
        if unique:
            statement = (
                dialect.insert(conn, engagement_events)
                .on_conflict_do_nothing()
                .returning(engagement_events.c.id)
            )
            stored = len(conn.execute(statement, unique).all())
        added = suppressions.add(conn, implied)
        proving = [row["send_id"] for row in unique if row["send_id"] is not None]
        resolved = unknown.resolve(conn, send_ids=proving) if proving else 0
    return IngestResult(
        received=len(rows), stored=stored, suppressions=added, resolved_unknown=resolved
    )


def ingest_body(engine: Engine, body: bytes, received_at: datetime) -> IngestResult:
    """Parse and ingest one webhook body (the signature is checked before this)."""
    return ingest(engine, parse_batch(body, received_at))
