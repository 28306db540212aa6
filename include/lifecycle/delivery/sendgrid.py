"""SendGrid v3 mail/send over keep-alive HTTP (aiohttp): one request per recipient (`send`),
or one body for up to 1,000 recipients with their own substitutions (`send_bulk`).

A request's answer applies to every recipient in it: 202 -> all sent, a dropped connection ->
all unknown. A bulk request is checked against SendGrid's per-request limits before it is sent
(`check_bulk`); one that breaks them fails its rows, not retryable, and is never sent.

Retry policy — retry only what surely was not accepted:

* connection could not be established (refused, DNS, connect timeout): retry;
* 429: wait until `X-RateLimit-Reset` (a unix time; at most `RATE_LIMIT_WAIT_MAX_S`, plus
  jitter; all requests of this transport pause), then retry;
* 500, 502, 503: SendGrid answered that it failed; it queues a message only with a 202, so
  these are retried with exponential backoff and full jitter;
* 504, a read timeout, or a connection dropped after the request was written: the message
  may have been accepted. Outcome `unknown`, never retried automatically;
* 401/403: `DeliveryStopped` — every further request would fail the same way;
* any other 4xx (400, 413, 415...): permanent failure, not retryable.

When retries run out the outcome is `failed` with `retryable=True`, and a later run of the
campaign plans the row again (see `ledger.requeue_retryable`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import random
import time
from typing import Any

import aiohttp
import msgspec

from lifecycle.delivery import BulkMessage, DeliveryStopped, Envelope, Message
from lifecycle.store.ledger import Outcome
from lifecycle.store.states import FailReason, LedgerStatus, SkipReason

SAFE_TO_RETRY = {429, 500, 502, 503}
PATH = "/v3/mail/send"
# SendGrid's rate-limit windows reset within a minute; a reset further away than this is
# more likely a wrong clock or header than a reason to stall the whole run.
RATE_LIMIT_WAIT_MAX_S = 120.0
RATE_LIMIT_JITTER_S = 0.5  # spreads the requests that all resume at the reset
# SendGrid's per-request limits (OpenAPI `tsg_mail_v3.json`, /work/shared/notes/sendgrid.md).
MAX_PERSONALIZATIONS = 1000
MAX_SUBSTITUTIONS_BYTES = 10_000  # per personalization: tags and values, UTF-8
MAX_CUSTOM_ARGS_BYTES = 10_000  # per personalization, as compact JSON, UTF-8


# Compact UTF-8 JSON, as SendGrid counts it; several times faster than `json.dumps` on the
# event loop's thread, where a 1,000-recipient request body is encoded.
encode = msgspec.json.encode


class BulkLimitError(ValueError):
    """A bulk request SendGrid would refuse; says which limit and which recipient row."""


def substitutions_size(substitutions: dict[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in substitutions.items())


def check_bulk(message: BulkMessage) -> None:
    """Raise `BulkLimitError` unless SendGrid accepts `message`'s personalizations."""
    count = len(message.personalizations)
    if not 0 < count <= MAX_PERSONALIZATIONS:
        raise BulkLimitError(f"{count} personalizations: SendGrid takes 1 to 1,000 per request")
    seen: set[str] = set()
    for item in message.personalizations:
        email = item.to_email.lower()
        if email in seen:
            raise BulkLimitError(f"row {item.send_id}: {email} is already in this request")
        seen.add(email)
        size = substitutions_size(item.substitutions)
        if size > MAX_SUBSTITUTIONS_BYTES:
            raise BulkLimitError(
                f"row {item.send_id}: substitutions of {size} bytes, SendGrid takes "
                f"{MAX_SUBSTITUTIONS_BYTES:,} per recipient"
            )
        if len(encode(item.custom_args)) >= MAX_CUSTOM_ARGS_BYTES:
            raise BulkLimitError(f"row {item.send_id}: custom_args of 10,000 bytes or more")


def payload(message: Message, envelope: Envelope) -> dict[str, Any]:
    to: dict[str, str] = {"email": message.to_email}
    if message.to_name:
        to["name"] = message.to_name
    body: dict[str, Any] = {
        "personalizations": [{"to": [to], "custom_args": message.custom_args}],
        "from": _address(envelope.sender_email, envelope.sender_name),
        "subject": message.subject,
        "content": [
            {"type": "text/plain", "value": message.text},
            {"type": "text/html", "value": message.html},
        ],
    }
    if envelope.reply_to_email:
        body["reply_to"] = _address(envelope.reply_to_email, envelope.reply_to_name)
    if message.headers:
        body["headers"] = message.headers
    if envelope.categories:
        body["categories"] = list(envelope.categories)
    if envelope.asm_group_id is not None:
        body["asm"] = {"group_id": envelope.asm_group_id}
    if envelope.sandbox_mode:
        body["mail_settings"] = {"sandbox_mode": {"enable": True}}
    tracking: dict[str, Any] = {}
    if envelope.click_tracking is not None:
        enable = envelope.click_tracking
        tracking["click_tracking"] = {"enable": enable, "enable_text": enable}
    if envelope.open_tracking is not None:
        tracking["open_tracking"] = {"enable": envelope.open_tracking}
    if tracking:
        body["tracking_settings"] = tracking
    return body


def bulk_payload(message: BulkMessage, envelope: Envelope) -> dict[str, Any]:
    """One request: the shared body, and per recipient their address, subject, headers
    (List-Unsubscribe), custom_args (send_id) and substitutions."""
    body: dict[str, Any] = {
        "personalizations": [
            {
                "to": [_address(item.to_email, item.to_name)],
                "subject": item.subject,
                "headers": item.headers,
                "custom_args": item.custom_args,
                "substitutions": item.substitutions,
            }
            for item in message.personalizations
        ],
        "from": _address(envelope.sender_email, envelope.sender_name),
        "content": [
            {"type": "text/plain", "value": message.text},
            {"type": "text/html", "value": message.html},
        ],
    }
    if envelope.reply_to_email:
        body["reply_to"] = _address(envelope.reply_to_email, envelope.reply_to_name)
    if envelope.categories:
        body["categories"] = list(envelope.categories)
    if envelope.asm_group_id is not None:
        body["asm"] = {"group_id": envelope.asm_group_id}
    if envelope.sandbox_mode:
        body["mail_settings"] = {"sandbox_mode": {"enable": True}}
    return body


def _address(email: str, name: str | None) -> dict[str, str]:
    return {"email": email, "name": name} if name else {"email": email}


def _errors(text: str) -> str:
    """SendGrid's error messages, without echoing anything else of the response."""
    try:
        errors = json.loads(text).get("errors", [])
        return "; ".join(f"{e.get('field') or 'request'}: {e.get('message')}" for e in errors if e)[
            :1000
        ]
    except (ValueError, AttributeError):
        return text[:200]


class SendGridTransport:
    throttled = True
    max_recipients = MAX_PERSONALIZATIONS

    def __init__(
        self,
        api_key: str,
        host: str,
        envelope: Envelope,
        *,
        concurrency: int = 32,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        max_attempts: int = 5,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        rate_limit_wait_max_s: float = RATE_LIMIT_WAIT_MAX_S,
    ) -> None:
        if not api_key:
            raise ValueError("the SendGrid transport needs an API key (SENDGRID_API_KEY)")
        self._api_key = api_key
        self.url = host.rstrip("/") + PATH
        self.envelope = envelope
        self.concurrency = concurrency
        self.timeout = aiohttp.ClientTimeout(
            total=timeout_s, connect=connect_timeout_s, sock_connect=connect_timeout_s
        )
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.rate_limit_wait_max_s = rate_limit_wait_max_s
        self._paused_until = 0.0
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"SendGridTransport(url={self.url!r}, concurrency={self.concurrency})"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.concurrency, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self.timeout,
                headers={
                    "Authorization": f"Bearer {self._api_key}",
                    "Content-Type": "application/json",
                },
                raise_for_status=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2**attempt))

    async def _wait_for_pause(self) -> None:
        delay = self._paused_until - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def _rate_limit_wait(self, headers: Any, attempt: int) -> float:
        """Seconds from now until `X-RateLimit-Reset`, bounded; a backoff without the header."""
        try:
            delay = float(headers.get("X-RateLimit-Reset", "nan")) - time.time()
        except (TypeError, ValueError):
            delay = math.nan
        if not math.isfinite(delay):
            return self._backoff(attempt) + 1.0
        return min(max(delay, 0.0), self.rate_limit_wait_max_s)

    def _pause_for_rate_limit(self, headers: Any, attempt: int) -> float:
        delay = self._rate_limit_wait(headers, attempt) + random.uniform(0, RATE_LIMIT_JITTER_S)
        self._paused_until = max(self._paused_until, time.monotonic() + delay)
        return delay

    async def send(self, message: Message) -> Outcome:
        outcome = await self._post(encode(payload(message, self.envelope)))
        return dataclasses.replace(outcome, send_id=message.send_id)

    async def send_bulk(self, message: BulkMessage) -> list[Outcome]:
        """One outcome per recipient of `message`, all alike: the request's answer."""
        try:
            check_bulk(message)
        except BulkLimitError as exc:
            error = f"not sent: {exc}"
            outcome = Outcome(
                0, LedgerStatus.FAILED, error=error, retryable=False, reason=FailReason.REJECTED
            )
        else:
            outcome = await self._post(encode(bulk_payload(message, self.envelope)))
        rest = dataclasses.astuple(outcome)[1:]  # dataclasses.replace per row costs ~50 µs
        return [Outcome(send_id, *rest) for send_id in message.send_ids]

    async def _post(self, body: bytes) -> Outcome:
        """The request's outcome, for send_id 0: the caller puts in its rows' ids."""
        last = Outcome(0, LedgerStatus.FAILED, retryable=True, reason=FailReason.NOT_ATTEMPTED)
        for attempt in range(self.max_attempts):
            await self._wait_for_pause()
            try:
                async with self._client().post(self.url, data=body) as response:
                    status = response.status
                    if 200 <= status < 300 and self.envelope.sandbox_mode:
                        # validated by SendGrid, never delivered: the row stays sendable later
                        return Outcome(
                            0,
                            LedgerStatus.SKIPPED,
                            http_status=status,
                            reason=SkipReason.SANDBOX,
                        )
                    if 200 <= status < 300:
                        message_id = response.headers.get("X-Message-Id")
                        return Outcome(0, LedgerStatus.SENT, message_id, status)
                    text = await response.text()
                    if status in (401, 403):
                        raise DeliveryStopped(
                            f"SendGrid refused the request with HTTP {status} ({_errors(text)}); "
                            "check the API key, its mail.send scope and the verified sender"
                        )
                    error = f"HTTP {status}: {_errors(text)}"
                    if status not in SAFE_TO_RETRY:
                        unknown = status == 504
                        return Outcome(
                            0,
                            LedgerStatus.UNKNOWN if unknown else LedgerStatus.FAILED,
                            http_status=status,
                            error=error,
                            retryable=None if unknown else False,
                            reason=FailReason.GATEWAY_TIMEOUT if unknown else FailReason.REJECTED,
                        )
                    last = Outcome(
                        0,
                        LedgerStatus.FAILED,
                        http_status=status,
                        error=error,
                        retryable=True,
                        reason=FailReason.RATE_LIMITED if status == 429 else None,
                    )
                    if status == 429:
                        self._pause_for_rate_limit(response.headers, attempt)
                        continue
            except aiohttp.ClientConnectorError as exc:  # nothing was sent
                last = Outcome(
                    0,
                    LedgerStatus.FAILED,
                    error=f"connection failed: {exc.os_error!r}"[:500],
                    retryable=True,
                    reason=FailReason.CONNECTION,
                )
            except aiohttp.ConnectionTimeoutError:  # connect timeout: nothing was sent
                last = Outcome(
                    0,
                    LedgerStatus.FAILED,
                    error="connect timeout",
                    retryable=True,
                    reason=FailReason.CONNECTION,
                )
            except (TimeoutError, aiohttp.ClientError) as exc:
                return Outcome(
                    0,
                    LedgerStatus.UNKNOWN,
                    error=f"{type(exc).__name__} after the request was sent"[:500],
                    reason=FailReason.TIMEOUT
                    if isinstance(exc, TimeoutError)
                    else FailReason.DISCONNECTED,
                )
            if attempt + 1 < self.max_attempts:
                await asyncio.sleep(self._backoff(attempt))
        return last
