"""SendGrid Event Webhook: SendGrid's published signed vector, tampering, idempotent ingestion.

Everything goes over real HTTP (uvicorn on loopback) into a real warehouse on both backends.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, delete, func, insert, select

from lifecycle.core.config import load_settings
from lifecycle.feedback import events
from lifecycle.store.schema import engagement_events, send_ledger, suppressions
from lifecycle.web.public import create_app
from lifecycle.web.server import serve_in_thread

# SendGrid's published test vector (sendgrid-python test/unit/test_eventwebhook.py).
VECTOR_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+"
    "2fNNRaINXvVpiglSI8eNEc6wEA3F+g=="
)
VECTOR_SIGNATURE = (
    "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiX"
    "DWzM+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM="
)
VECTOR_TIMESTAMP = "1600112502"
VECTOR_EVENT = {
    "email": "hello@world.com",
    "event": "dropped",
    "reason": "Bounced Address",
    "sg_event_id": "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA",
    "sg_message_id": "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0",
    "smtp-id": "<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>",
    "timestamp": 1600112492,
}
# The signature covers the exact bytes, including SendGrid's trailing CRLF.
VECTOR_BODY = (json.dumps([VECTOR_EVENT], sort_keys=True, separators=(",", ":")) + "\r\n").encode()
# Another published P-256 key from the same test (signature must not verify with it).
OTHER_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqTxd43gyp8IOEto2LdIfjRQrIbsd4SXZkLW6jDutdhXSJCWHw8REntlo7aN"
    "Dthvj+y7GjUuFDb/R1NGe1OPzpA=="
)
VECTOR_NOW = int(VECTOR_TIMESTAMP) + 30


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def signed_headers(body: bytes, signature: str, timestamp: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        events.SIGNATURE_HEADER: signature,
        events.TIMESTAMP_HEADER: timestamp,
    }


# --- the published vector, verified directly ----------------------------------------------
def verify(body: bytes, signature: str, timestamp: str, key: str = VECTOR_KEY, now: float = 0):
    events.verify_signature(
        events.load_public_key(key),
        body,
        signature,
        timestamp,
        now=now or VECTOR_NOW,
        max_age_seconds=600,
    )


def test_published_vector_verifies() -> None:
    verify(VECTOR_BODY, VECTOR_SIGNATURE, VECTOR_TIMESTAMP)


@pytest.mark.parametrize(
    "body, signature, timestamp, key",
    [
        pytest.param(VECTOR_BODY.rstrip(b"\r\n"), VECTOR_SIGNATURE, VECTOR_TIMESTAMP, VECTOR_KEY,
                     id="body-without-crlf"),
        pytest.param(VECTOR_BODY.replace(b"dropped", b"bounce"), VECTOR_SIGNATURE,
                     VECTOR_TIMESTAMP, VECTOR_KEY, id="tampered-body"),
        pytest.param(VECTOR_BODY, VECTOR_SIGNATURE, str(int(VECTOR_TIMESTAMP) + 1), VECTOR_KEY,
                     id="tampered-timestamp"),
        pytest.param(VECTOR_BODY, "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8x"
                     "onZGi6BpSzoQsbVRamr2nlxFDWYNH3j/0=", VECTOR_TIMESTAMP, VECTOR_KEY,
                     id="tampered-signature"),
        pytest.param(VECTOR_BODY, VECTOR_SIGNATURE, VECTOR_TIMESTAMP, OTHER_KEY, id="other-key"),
        pytest.param(VECTOR_BODY, "not base64!", VECTOR_TIMESTAMP, VECTOR_KEY, id="garbage-sig"),
        pytest.param(VECTOR_BODY, VECTOR_SIGNATURE, "timestamp", VECTOR_KEY, id="garbage-ts"),
        pytest.param(VECTOR_BODY, "", VECTOR_TIMESTAMP, VECTOR_KEY, id="unsigned"),
    ],
)  # fmt: skip
def test_tampered_vector_is_rejected(body: bytes, signature: str, timestamp: str, key: str) -> None:
    with pytest.raises(events.WebhookRejected) as caught:
        verify(body, signature, timestamp, key)
    assert caught.value.status == 401


@pytest.mark.parametrize("offset", [-601, 601])
def test_stale_or_future_timestamp_is_rejected(offset: int) -> None:
    with pytest.raises(events.WebhookRejected, match="window"):
        verify(VECTOR_BODY, VECTOR_SIGNATURE, VECTOR_TIMESTAMP, now=int(VECTOR_TIMESTAMP) + offset)


# --- over HTTP ----------------------------------------------------------------------------
@pytest.fixture
def webhook(
    warehouse_url: str, engine: Engine, tmp_path: Path
) -> Iterator[Callable[..., httpx.Response]]:
    """POST to the webhook of a public app signed with SendGrid's vector key at VECTOR_NOW."""
    settings = load_settings(
        home=tmp_path, warehouse_url=warehouse_url, sendgrid_webhook_public_key=VECTOR_KEY
    )
    with (
        serve_in_thread(create_app(settings, clock=lambda: VECTOR_NOW)) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):

        def post(body: bytes, headers: dict[str, str]) -> httpx.Response:
            return client.post("/events/sendgrid", content=body, headers=headers)

        yield post


def test_vector_over_http_is_stored_once_and_suppresses(
    webhook: Callable[..., httpx.Response], engine: Engine
) -> None:
    headers = signed_headers(VECTOR_BODY, VECTOR_SIGNATURE, VECTOR_TIMESTAMP)
    first = webhook(VECTOR_BODY, headers)
    replay = webhook(VECTOR_BODY, headers)

    assert first.status_code == replay.status_code == 200
    assert (first.json()["stored"], replay.json()["stored"]) == (1, 0)
    with engine.connect() as conn:
        stored = conn.execute(select(engagement_events)).one()
        suppressed = conn.execute(select(suppressions)).one()
    assert stored.sg_event_id == VECTOR_EVENT["sg_event_id"]
    assert stored.message_id == VECTOR_EVENT["sg_message_id"].split(".")[0]
    assert stored.occurred_at == datetime.fromtimestamp(VECTOR_EVENT["timestamp"], UTC)
    assert (suppressed.email, suppressed.scope, suppressed.reason, suppressed.source) == (
        VECTOR_EVENT["email"],
        "global",
        "bounce",
        "webhook",
    )


@pytest.mark.parametrize(
    "body, headers",
    [
        (VECTOR_BODY.replace(b"hello@", b"hallo@"), (VECTOR_SIGNATURE, VECTOR_TIMESTAMP)),
        (VECTOR_BODY, (VECTOR_SIGNATURE, "1600112503")),
        (VECTOR_BODY, (VECTOR_SIGNATURE.replace("MEUCIG", "MEUCIH"), VECTOR_TIMESTAMP)),
        (VECTOR_BODY, None),
    ],
    ids=["body", "timestamp", "signature", "unsigned"],
)
def test_tampered_or_unsigned_post_gets_401_and_stores_nothing(
    webhook: Callable[..., httpx.Response],
    engine: Engine,
    body: bytes,
    headers: tuple[str, str] | None,
) -> None:
    sent = signed_headers(body, *headers) if headers else {"Content-Type": "application/json"}
    response = webhook(body, sent)
    assert response.status_code == 401
    assert count(engine, engagement_events) == count(engine, suppressions) == 0


# --- ingestion semantics, with our own key so batches can be anything ----------------------
class Signer:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key = base64.b64encode(der).decode()

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signature = self.key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return signed_headers(body, base64.b64encode(signature).decode(), stamp)


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
def post_events(
    warehouse_url: str, tmp_path: Path, signer: Signer
) -> Iterator[Callable[[Any], httpx.Response]]:
    settings = load_settings(
        home=tmp_path, warehouse_url=warehouse_url, sendgrid_webhook_public_key=signer.public_key
    )
    with (
        serve_in_thread(create_app(settings)) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):

        def post(batch: Any) -> httpx.Response:
            body = batch if isinstance(batch, bytes) else json.dumps(batch).encode()
            return client.post("/events/sendgrid", content=body, headers=signer.headers(body))

        yield post


def event(name: str, n: int, **extra: Any) -> dict[str, Any]:
    return {
        "event": name,
        "email": f"Person{n}@Example.com",
        "timestamp": 1_790_000_000 + n,
        "sg_event_id": f"{name}-{n}",
        "sg_message_id": f"msg{n:019d}.filter-{n}",
        "send_id": str(n),
        "campaign": "birthday",
        **extra,
    }


def stored_events(engine: Engine) -> set[tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                engagement_events.c.natural_key,
                engagement_events.c.event,
                engagement_events.c.send_id,
                engagement_events.c.campaign_id,
                engagement_events.c.message_id,
            )
        ).all()
    return {tuple(r) for r in rows}


def stored_suppressions(engine: Engine) -> set[tuple[str, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(suppressions.c.email, suppressions.c.scope, suppressions.c.reason)
        ).all()
    return {tuple(r) for r in rows}


def test_duplicates_and_replays_change_nothing(
    post_events: Callable[[Any], httpx.Response], engine: Engine
) -> None:
    batch = [event("delivered", n) for n in range(50)] + [event("open", n) for n in range(50)]
    # same event twice in a batch; same natural key under another sg_event_id; no sg_event_id
    noisy = [
        *batch,
        batch[0],
        {**batch[1], "sg_event_id": "another-id"},
        {k: v for k, v in batch[2].items() if k != "sg_event_id"},
    ]
    first = post_events(noisy)
    assert first.status_code == 200, first.text
    after_first = stored_events(engine)
    replay = post_events(noisy)

    assert first.json()["stored"] == len(batch) == count(engine, engagement_events)
    assert replay.json()["stored"] == 0
    assert stored_events(engine) == after_first


def test_order_of_batches_does_not_matter(engine: Engine) -> None:
    one = [event("delivered", n) for n in range(20)] + [event("bounce", 3, type="bounce")]
    two = [event("open", n) for n in range(10)] + [event("delivered", n) for n in range(5, 25)]
    two += [event("spamreport", 7)]

    def ingest_in_order(*batches: list[dict[str, Any]]) -> tuple[set[Any], set[Any]]:
        with engine.begin() as conn:
            conn.execute(delete(engagement_events))
            conn.execute(delete(suppressions))
        for batch in batches:
            events.ingest_body(engine, json.dumps(batch).encode(), datetime.now(UTC))
        return stored_events(engine), stored_suppressions(engine)

    forward = ingest_in_order(one, two)
    assert len(forward[0]) == 20 + 1 + 10 + 5 + 1
    assert ingest_in_order(two, one) == forward


def test_events_before_their_send_are_kept_and_join_later(
    post_events: Callable[[Any], httpx.Response], engine: Engine
) -> None:
    send_id = 4242
    response = post_events([event("delivered", send_id), event("open", send_id)])
    assert response.status_code == 200
    with engine.begin() as conn:
        conn.execute(
            insert(send_ledger).values(
                id=send_id,
                campaign_id="birthday",
                occurrence_key="2026",
                customer_id=send_id,
                run_id=1,
                status="sent",
                template="birthday",
                planned_at=datetime.now(UTC),
            )
        )
        joined = conn.execute(
            select(engagement_events.c.event)
            .join(send_ledger, send_ledger.c.id == engagement_events.c.send_id)
            .where(send_ledger.c.customer_id == send_id)
        ).scalars()
        assert sorted(joined) == ["delivered", "open"]


def test_suppressing_events(post_events: Callable[[Any], httpx.Response], engine: Engine) -> None:
    batch = [
        event("bounce", 1, type="bounce", reason="550 no such user"),
        event("bounce", 2, type="blocked", reason="421 try later"),
        event("dropped", 3, reason="Bounced Address"),
        event("dropped", 4, reason="Invalid"),
        event("dropped", 5, reason="Spam Content (if spam checker app enabled)"),
        event("spamreport", 6),
        event("unsubscribe", 7),
        event("group_unsubscribe", 8, asm_group_id=42),
        event("delivered", 9),
        event("click", 10, url="https://shop.example/"),
    ]
    assert post_events(batch).status_code == 200
    assert stored_suppressions(engine) == {
        ("person1@example.com", "global", "bounce"),
        ("person3@example.com", "global", "bounce"),
        ("person4@example.com", "global", "invalid"),
        ("person6@example.com", "global", "spamreport"),
        ("person7@example.com", "global", "unsubscribe"),
        ("person8@example.com", "group:42", "group_unsubscribe"),
    }
    assert count(engine, engagement_events) == len(batch)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"event": "open"}',
        json.dumps([event("open", 1), "oops"]).encode(),
        json.dumps([event("open", 1), {**event("open", 2), "timestamp": "yesterday"}]).encode(),
        json.dumps(
            [event("open", 1), {k: v for k, v in event("open", 2).items() if k != "event"}]
        ).encode(),
        json.dumps([event("open", 1), {**event("open", 2), "sg_event_id": "x" * 500}]).encode(),
        b"\xff\xfe[]",
        b'[{"event": "open", "timestamp": 1, "email": "\xff"}]',
        json.dumps([{**event("open", 1), "email": "nul\x00@example.com"}]).encode(),
        json.dumps([{**event("open", 1), "reason": "lone \ud800 surrogate"}]).encode(),
        json.dumps([{**event("open", 1), "timestamp": float("nan")}]).encode(),
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=[
        "not-json",
        "not-array",
        "not-object",
        "bad-timestamp",
        "no-event",
        "long-id",
        "utf16",
        "not-utf8",
        "nul-char",
        "surrogate",
        "nan",
        "deep",
    ],
)
def test_malformed_batch_gets_400_and_stores_nothing(
    post_events: Callable[[Any], httpx.Response], engine: Engine, body: bytes
) -> None:
    response = post_events(body)
    assert response.status_code == 400, response.text
    assert count(engine, engagement_events) == count(engine, suppressions) == 0


# --- well-signed but malformed fields: 400 naming the event and field, nothing stored ------
def batch_ending_with(bad: dict[str, Any]) -> list[dict[str, Any]]:
    """Two valid events that would store events and suppressions, then `bad` as event 2."""
    return [event("bounce", 1, type="bounce"), event("group_unsubscribe", 2, asm_group_id=42), bad]


def bad_event(field: str, value: Any) -> dict[str, Any]:
    return {**event("group_unsubscribe", 3, asm_group_id=7), field: value}


def assert_refused(response: httpx.Response, engine: Engine, detail: str = "") -> None:
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith(detail)
    assert count(engine, engagement_events) == count(engine, suppressions) == 0


@pytest.mark.parametrize(
    "field, value",
    [
        # PostgreSQL text holds neither a NUL nor a lone surrogate (not UTF-8)
        pytest.param("email", "lone\ud800@example.com", id="email-surrogate"),
        pytest.param("email", "nul\x00@example.com", id="email-nul"),
        pytest.param("url", "https://shop.example/\udfff", id="url-surrogate"),
        pytest.param("sg_message_id", "msg\x00.filter", id="message-id-nul"),
        pytest.param("note", {"nested": ["fine", "\ud800"]}, id="extra-field-surrogate"),
        pytest.param("tags", ["nul\x00"], id="extra-field-nul"),
        pytest.param("\ud800", "value", id="field-name-surrogate"),
        # integers past their column's range
        pytest.param("asm_group_id", 10**30, id="group-id-past-scope-column"),
        pytest.param("asm_group_id", 2**31, id="group-id-past-32-bit"),
        pytest.param("asm_group_id", -1, id="group-id-negative"),
        pytest.param("timestamp", 32_503_680_000, id="timestamp-year-3000"),
        pytest.param("timestamp", 10**20, id="timestamp-past-datetime"),
        pytest.param("timestamp", -1, id="timestamp-before-1970"),
        # wrong JSON types
        pytest.param("email", {"address": "a@example.com"}, id="email-object"),
        pytest.param("email", ["a@example.com"], id="email-list"),
        pytest.param("email", 42, id="email-number"),
        pytest.param("event", ["open"], id="event-list"),
        pytest.param("reason", True, id="reason-bool"),
        pytest.param("timestamp", True, id="timestamp-bool"),
        pytest.param("timestamp", "1790000000", id="timestamp-string"),
        pytest.param("asm_group_id", True, id="group-id-bool"),
        pytest.param("asm_group_id", "42", id="group-id-string"),
        pytest.param("send_id", True, id="send-id-bool"),
        pytest.param("send_id", {"id": 1}, id="send-id-object"),
        pytest.param("campaign", ["birthday"], id="campaign-list"),
        # longer than the column
        pytest.param("email", "a" * 309 + "@example.com", id="email-321"),
        pytest.param("event", "x" * 33, id="event-33"),
        pytest.param("sg_event_id", "x" * 129, id="sg-event-id-129"),
        pytest.param("sg_message_id", "x" * 1001, id="message-id-1001"),
    ],
)
def test_malformed_field_gets_400_naming_it_and_stores_nothing(
    post_events: Callable[[Any], httpx.Response], engine: Engine, field: str, value: Any
) -> None:
    response = post_events(batch_ending_with(bad_event(field, value)))
    assert_refused(response, engine, f"event 2: {field!a} ")


@pytest.mark.parametrize(
    "raw, detail",
    [
        (b"1e999", "event 2: 'score' holds an infinite number"),
        (b"1" * 5000, "body is not JSON"),
        (b"[" * 100 + b"]" * 100, "event 2: 'score' is nested deeper than"),
    ],
    ids=["infinite-float", "int-past-4300-digits", "nested-100-deep"],
)
def test_value_the_warehouse_cannot_hold_gets_400_and_stores_nothing(
    post_events: Callable[[Any], httpx.Response], engine: Engine, raw: bytes, detail: str
) -> None:
    body = json.dumps(batch_ending_with(bad_event("score", 0))).encode()
    response = post_events(body.replace(b'"score": 0', b'"score": ' + raw))
    assert_refused(response, engine, detail)


def test_body_not_utf8_gets_400_and_stores_nothing(
    post_events: Callable[[Any], httpx.Response], engine: Engine
) -> None:
    body = json.dumps(batch_ending_with(event("open", 3))).encode("utf-16")
    assert_refused(post_events(body), engine, "body is not UTF-8")


@pytest.mark.parametrize(
    "field, value",
    [("send_id", "²"), ("send_id", "١٢"), ("send_id", "-5"), ("send_id", "1" * 19),
     ("send_id", 10**30), ("campaign", "x" * 65)],
    ids=["superscript", "arabic-indic", "negative", "past-bigint", "int-past-bigint", "long"],
)  # fmt: skip
def test_custom_args_not_ours_are_stored_unlinked(
    post_events: Callable[[Any], httpx.Response], engine: Engine, field: str, value: Any
) -> None:
    response = post_events([{**event("open", 1), field: value}])
    assert response.status_code == 200, response.text
    with engine.connect() as conn:
        stored = conn.execute(select(engagement_events)).one()
    expected = (None, "birthday") if field == "send_id" else (1, None)
    assert (stored.send_id, stored.campaign_id) == expected


def test_oversized_batch_gets_413_and_stores_nothing(
    post_events: Callable[[Any], httpx.Response], engine: Engine
) -> None:
    padding = "x" * 2000
    batch = [event("delivered", n, note=padding) for n in range(600)]  # ~1.3 MB
    response = post_events(batch)
    assert response.status_code == 413
    assert count(engine, engagement_events) == 0


def test_stale_signature_over_http_gets_401(
    post_events: Callable[[Any], httpx.Response],
    signer: Signer,
    warehouse_url: str,
    tmp_path: Path,
    engine: Engine,
) -> None:
    settings = load_settings(
        home=tmp_path, warehouse_url=warehouse_url, sendgrid_webhook_public_key=signer.public_key
    )
    body = json.dumps([event("open", 1)]).encode()
    stale = signer.headers(body, timestamp=int(time.time()) - settings.webhook_max_age_seconds - 5)
    with serve_in_thread(create_app(settings)) as server:
        response = httpx.post(f"{server.url}/events/sendgrid", content=body, headers=stale)
    assert response.status_code == 401
    assert count(engine, engagement_events) == 0


def test_a_group_unsubscribe_without_its_group_suppresses_globally(
    post_events: Callable[[Any], httpx.Response], engine: Engine
) -> None:
    """The customer asked out of something we cannot name: not mailed again at all."""
    unnamed = event("group_unsubscribe", 5)
    assert "asm_group_id" not in unnamed
    assert post_events([unnamed]).status_code == 200
    assert stored_suppressions(engine) == {("person5@example.com", "global", "group_unsubscribe")}


def test_events_with_an_empty_sg_event_id_are_all_kept_without_one(
    post_events: Callable[[Any], httpx.Response], engine: Engine
) -> None:
    """ "" is no id: stored as NULL, it cannot make later events look like duplicates."""
    batches = [[event("delivered", 1, sg_event_id="")], [event("open", 2, sg_event_id="")]]
    assert [post_events(batch).json()["stored"] for batch in batches] == [1, 1]
    with engine.connect() as conn:
        ids = conn.execute(select(engagement_events.c.sg_event_id)).scalars().all()
    assert ids == [None, None]
