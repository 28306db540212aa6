"""Transports over real HTTP against the sink, and the outbox on disk."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.parser
import logging
import socket
import time
from email import policy
from pathlib import Path

import pytest

from lifecycle.delivery import DeliveryStopped, Envelope, Message
from lifecycle.delivery.outbox import OutboxTransport
from lifecycle.delivery.ratelimit import TokenBucket
from lifecycle.delivery.sendgrid import (
    RATE_LIMIT_JITTER_S,
    RATE_LIMIT_WAIT_MAX_S,
    SendGridTransport,
)
from lifecycle.devtools.sink.thread import run_sink_in_thread
from lifecycle.store.ledger import Outcome

KEY = "SG.delivery-test-secret-key"
ENVELOPE = Envelope(
    sender_email="hello@shop.example",
    sender_name="Shop",
    reply_to_email="care@shop.example",
    categories=("lifecycle", "test"),
    asm_group_id=42,
)


def message(i: int) -> Message:
    return Message(
        send_id=i,
        to_email=f"customer{i}@example.am",
        to_name=f"Customer {i}",
        subject=f"Hello {i}",
        text=f"plain {i}",
        html=f"<p>html {i}</p>",
        headers={
            "List-Unsubscribe": "<https://shop.example/u/t>, <mailto:u@shop.example>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
        custom_args={"send_id": str(i), "campaign": "test", "occurrence_key": "k"},
    )


def send_all(transport: SendGridTransport, count: int) -> list[Outcome]:
    async def run() -> list[Outcome]:
        try:
            return await asyncio.gather(*(transport.send(message(i)) for i in range(count)))
        finally:
            await transport.close()

    return asyncio.run(run())


def transport(url: str, key: str = KEY, **options: float) -> SendGridTransport:
    defaults = {"backoff_base_s": 0.01, "backoff_cap_s": 0.2, "timeout_s": 5.0}
    return SendGridTransport(key, url, ENVELOPE, concurrency=8, **{**defaults, **options})


def test_sends_one_request_per_recipient_with_our_fields() -> None:
    with run_sink_in_thread(api_keys=[KEY]) as sink:
        outcomes = send_all(transport(sink.url), 5)
        stored = {m["custom_args"]["send_id"]: m for m in sink.state.snapshot()}
    assert [o.status for o in outcomes] == ["sent"] * 5
    assert {o.message_id for o in outcomes} == {m["message_id"] for m in stored.values()}
    body = stored["3"]["body"]
    assert body["personalizations"] == [
        {
            "to": [{"email": "customer3@example.am", "name": "Customer 3"}],
            "custom_args": {"send_id": "3", "campaign": "test", "occurrence_key": "k"},
        }
    ]
    assert body["asm"] == {"group_id": 42}
    assert body["categories"] == ["lifecycle", "test"]
    assert body["reply_to"] == {"email": "care@shop.example"}
    assert body["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "mail_settings" not in body


def test_exactly_once_under_429_and_5xx() -> None:
    faults = {"rate_429": 0.15, "rate_5xx": 0.15, "reset_after_s": 0, "seed": 7}
    with run_sink_in_thread(api_keys=[KEY], **faults) as sink:
        outcomes = send_all(transport(sink.url, max_attempts=10), 60)
        received = sink.state.send_ids()
        stats = dict(sink.state.stats)
    assert stats["429"] > 0 and stats["500"] + stats["503"] > 0
    assert [o.status for o in outcomes] == ["sent"] * 60
    assert received == {str(i): 1 for i in range(60)}


def test_dropped_connection_is_unknown_and_never_resent() -> None:
    with run_sink_in_thread(api_keys=[KEY], fail_next=["drop", "drop"]) as sink:
        outcomes = send_all(transport(sink.url), 10)
        received = sink.state.send_ids()
    unknown = {o.send_id for o in outcomes if o.status == "unknown"}
    sent = {o.send_id for o in outcomes if o.status == "sent"}
    assert len(unknown) == 2 and len(sent) == 8
    assert {int(i) for i in received} == sent  # the dropped ones were not retried
    assert set(received.values()) == {1}


def test_timeout_after_the_request_is_unknown_and_not_retried() -> None:
    with run_sink_in_thread(api_keys=[KEY], fail_next=["slow"], slow_ms=2_000) as sink:
        outcomes = send_all(transport(sink.url, timeout_s=0.5), 3)
        time.sleep(0.1)
        received = sink.state.send_ids()
    statuses = sorted(o.status for o in outcomes)
    assert statuses == ["sent", "sent", "unknown"]
    assert next(o for o in outcomes if o.status == "unknown").reason == "timeout"
    assert sum(received.values()) == 3  # the slow one did arrive: retrying would duplicate it


def test_refused_connection_is_failed_and_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outcomes = send_all(transport(f"http://127.0.0.1:{port}", max_attempts=3), 2)
    assert {(o.status, o.retryable, o.reason) for o in outcomes} == {("failed", True, "connection")}


def test_rate_limit_exhausted_is_failed_and_retryable() -> None:
    faults = {"fail_next": ["429"] * 3, "reset_after_s": 0}
    with run_sink_in_thread(api_keys=[KEY], **faults) as sink:
        outcomes = send_all(transport(sink.url, max_attempts=3), 1)
        assert sink.state.snapshot() == []
    assert (outcomes[0].status, outcomes[0].http_status, outcomes[0].retryable) == (
        "failed",
        429,
        True,
    )


def test_429_waits_until_the_rate_limit_reset() -> None:
    # The reset is 2 s away, well beyond backoff_cap_s (0.2 s): the retry must wait for it.
    with run_sink_in_thread(api_keys=[KEY], fail_next=["429"], reset_after_s=2) as sink:
        before = time.time()
        outcomes = send_all(transport(sink.url), 1)
        accepted = sink.state.snapshot()
    assert [o.status for o in outcomes] == ["sent"]
    # The sink answered X-RateLimit-Reset = int(time of the 429 + 2) >= int(before + 2).
    assert accepted[0]["received_at"] >= int(before + 2)


@pytest.mark.parametrize(
    ("reset_in_s", "low", "high"),
    [
        (45, 43, 45),  # beyond the old 30 s cap
        (3_600, RATE_LIMIT_WAIT_MAX_S, RATE_LIMIT_WAIT_MAX_S),
        (-10, 0, 0),  # already past
    ],
)
def test_rate_limit_wait_is_the_reset_from_now_bounded(
    reset_in_s: int, low: float, high: float
) -> None:
    headers = {"X-RateLimit-Reset": str(int(time.time()) + reset_in_s)}
    delay = transport("http://127.0.0.1:9")._pause_for_rate_limit(headers, attempt=0)
    assert low <= delay <= high + RATE_LIMIT_JITTER_S


def test_bad_request_is_a_permanent_failure() -> None:
    bad = Envelope(sender_email="hello@shop.example", categories=("día",))
    with run_sink_in_thread(api_keys=[KEY]) as sink:
        outcomes = send_all(SendGridTransport(KEY, sink.url, bad), 2)
    assert {(o.status, o.http_status, o.retryable) for o in outcomes} == {("failed", 400, False)}
    assert "categories" in (outcomes[0].error or "")


def test_bad_key_stops_without_leaking_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with run_sink_in_thread(api_keys=["SG.the-right-one"]) as sink:
        client = transport(sink.url)
        with pytest.raises(DeliveryStopped) as raised:
            send_all(client, 3)
    assert "401" in str(raised.value)
    for text in (str(raised.value), repr(raised.value), repr(client), caplog.text):
        assert KEY not in text


def test_outbox_writes_complete_eml_files(tmp_path: Path) -> None:
    outbox = OutboxTransport(tmp_path / "campaign", ENVELOPE)
    outcomes = [asyncio.run(outbox.send(message(i))) for i in range(3)]
    files = sorted((tmp_path / "campaign").iterdir())
    assert [f.name for f in files] == ["0.eml", "1.eml", "2.eml"]  # no temporary files left
    parsed = email.message_from_bytes(files[1].read_bytes(), policy=policy.default)
    assert parsed["To"] == "Customer 1 <customer1@example.am>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed.get_content_type() == "multipart/alternative"
    parts = [part.get_content_type() for part in parsed.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    assert parsed.get_body(("html",)).get_content().strip() == "<p>html 1</p>"
    assert outcomes[1].message_id == parsed["Message-ID"].strip("<>")
    assert len({o.message_id for o in outcomes}) == 3


@pytest.mark.parametrize(
    "value",
    [
        "<https://s.example/u/t>, <mailto:u@s.example>",  # fits on one line: not folded
        f"<https://shop.example/lifecycle/unsubscribe/{'t' * 300}>, "
        f"<mailto:unsubscribe@shop.example?subject=unsubscribe%20{'t' * 300}>",
    ],
)
def test_outbox_list_unsubscribe_survives_a_strict_parser(tmp_path: Path, value: str) -> None:
    """RFC 2369: a list of <URI>s, never RFC 2047 encoded-words; folded only after a comma."""
    sent = message(7)
    outbox = OutboxTransport(tmp_path, ENVELOPE)
    asyncio.run(
        outbox.send(dataclasses.replace(sent, headers={**sent.headers, "List-Unsubscribe": value}))
    )
    raw = (tmp_path / "7.eml").read_bytes()
    parsed = email.parser.BytesParser(policy=policy.strict).parsebytes(raw)
    assert parsed["List-Unsubscribe"] == value
    [written] = [v for name, v in parsed.raw_items() if name == "List-Unsubscribe"]
    assert "=?" not in written
    lines = written.splitlines()
    assert all(line.endswith(",") for line in lines[:-1])  # folded at commas only
    assert len(lines) == (1 if len(value) < 60 else 2)
    assert " ".join(line.strip() for line in lines) == value
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_token_bucket_spaces_acquisitions() -> None:
    async def run() -> float:
        bucket = TokenBucket(rate=50, burst=1)
        start = time.monotonic()
        for _ in range(11):
            await bucket.acquire()
        return time.monotonic() - start

    assert asyncio.run(run()) >= 10 / 50 * 0.95
