"""The sink's aiohttp application: SendGrid's `POST /v3/mail/send`, with faults on demand.

`POST /v3/mail/send` checks the bearer key and the body (`validation`) and answers 400 with
SendGrid's error shape (any malformed body, never a 500), or 202 with an `X-Message-Id` (200
in sandbox mode). Accepted emails, one per personalization with its substitutions applied
(`personalize`), are kept in a `SinkState` that in-process tests read directly
(`GET /_sink/messages` out of process; `/_sink/stats` counts).

Faults on demand (at start, or `POST /_sink/faults` with the same JSON fields):
latency (every request), and per-request probabilities of a 429 with `X-RateLimit-*`
headers, a 500/503, a dropped connection (closed before the request is read, nothing stored)
and a slow response (stored, answered after `slow_ms`). `fail_next` forces the next N
requests into one fault kind, for deterministic tests; it alone offers a 504 (stored, as
SendGrid may have accepted the message behind a gateway timeout).

Other modules add routes with `build_app(state, extensions=[register])`, `register(app)`
receiving the application (the state is `app[STATE]`).
"""

from __future__ import annotations

import asyncio
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from aiohttp import web

from lifecycle.devtools.sink import personalize, suppressions
from lifecycle.devtools.sink.validation import validate

FAULT_KINDS = ("429", "500", "503", "504", "drop", "slow")
# Adds routes (or middleware) to the sink's application, e.g. `suppressions.register`.
Extension = Callable[[web.Application], None]


@dataclass
class Faults:
    latency_ms: float = 0.0
    rate_429: float = 0.0
    rate_5xx: float = 0.0
    rate_drop: float = 0.0
    rate_slow: float = 0.0
    slow_ms: float = 5_000.0
    reset_after_s: float = 1.0  # X-RateLimit-Reset = now + this
    fail_next: list[str] = field(default_factory=list)  # e.g. ["429", "drop", "500"]

    def update(self, values: dict[str, Any]) -> None:
        known = {f.name for f in fields(self)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}")
        bad = [kind for kind in values.get("fail_next", []) if kind not in FAULT_KINDS]
        if bad:
            raise ValueError(f"fail_next kinds must be in {FAULT_KINDS}, got {bad}")
        for name, value in values.items():
            setattr(self, name, list(value) if name == "fail_next" else float(value))


@dataclass
class SinkState:
    """What the sink received. `api_keys` None accepts any non-empty bearer key."""

    api_keys: set[str] | None = None
    keep_bodies: bool = True
    faults: Faults = field(default_factory=Faults)
    seed: int | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)
        self.lock = threading.Lock()

    def recipients(self) -> Counter[str]:
        """How many accepted messages each address received."""
        with self.lock:
            return Counter(to for m in self.messages for to in m["to"])

    def send_ids(self) -> Counter[str]:
        with self.lock:
            return Counter(m["custom_args"].get("send_id") for m in self.messages)

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.messages)

    def reset(self) -> None:
        with self.lock:
            self.messages.clear()
            self.stats.clear()

    def next_fault(self) -> str | None:
        faults = self.faults
        if faults.fail_next:
            return faults.fail_next.pop(0)
        roll = self.random.random()
        for kind, rate in (
            ("429", faults.rate_429),
            ("5xx", faults.rate_5xx),
            ("drop", faults.rate_drop),
            ("slow", faults.rate_slow),
        ):
            if roll < rate:
                return self.random.choice(["500", "503"]) if kind == "5xx" else kind
            roll -= rate
        return None


def make_state(
    *,
    api_keys: Iterable[str] | None = None,
    keep_bodies: bool = True,
    seed: int | None = None,
    **faults: Any,
) -> SinkState:
    state = SinkState(
        api_keys=set(api_keys) if api_keys is not None else None,
        keep_bodies=keep_bodies,
        seed=seed,
    )
    state.faults.update(faults)
    return state


STATE = web.AppKey("sink_state", SinkState)


def _error(message: str, field_name: str | None = None, status: int = 400) -> web.Response:
    body = {"errors": [{"message": message, "field": field_name, "help": None}]}
    return web.json_response(body, status=status)


async def mail_send(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    state.stats["requests"] += 1
    fault = state.next_fault()
    if fault == "drop":
        state.stats["dropped"] += 1
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=500)  # never reaches the client: the connection is gone
    if state.faults.latency_ms:
        await asyncio.sleep(state.faults.latency_ms / 1000)
    if fault == "429":
        state.stats["429"] += 1
        reset = int(time.time() + state.faults.reset_after_s)
        headers = {
            "X-RateLimit-Limit": "600",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(reset),
        }
        return web.json_response(
            {"errors": [{"message": "too many requests", "field": None, "help": None}]},
            status=429,
            headers=headers,
        )
    if fault in ("500", "503"):
        state.stats[fault] += 1
        return _error("Service unavailable (injected by the sink).", status=int(fault))

    authorization = request.headers.get("Authorization", "")
    key = (
        authorization.removeprefix("Bearer ").strip() if authorization.startswith("Bearer ") else ""
    )
    if not key or (state.api_keys is not None and key not in state.api_keys):
        state.stats["401"] += 1
        return _error(
            "The provided authorization grant is invalid, expired, or revoked", status=401
        )
    try:
        body = await request.json()
    except (ValueError, LookupError, RecursionError):  # bad JSON or UTF-8, charset, nesting
        state.stats["400"] += 1
        return _error("Bad Request: the body is not valid JSON.")
    problem = validate(body)
    if problem is not None:
        state.stats["400"] += 1
        return _error(*problem)

    message_id = secrets.token_urlsafe(16)[:22]
    sandbox = body.get("mail_settings", {}).get("sandbox_mode", {}).get("enable", False)
    received_at = time.time()
    # One record per email, i.e. per personalization, as the recipient receives it.
    records = [
        {
            "message_id": message_id,
            "received_at": received_at,
            **email,
            "categories": body.get("categories") or [],
            "sandbox": sandbox,
            **({"body": body} if state.keep_bodies else {}),
        }
        for email in personalize.emails(body, with_content=state.keep_bodies)
    ]
    if fault == "504":
        state.stats["504"] += 1
        with state.lock:
            state.messages.extend(records)
        return _error("Gateway timeout (injected by the sink; the message was kept).", status=504)
    if fault == "slow":
        state.stats["slow"] += 1
        with state.lock:
            state.messages.extend(records)
        await asyncio.sleep(state.faults.slow_ms / 1000)
    else:
        with state.lock:
            state.messages.extend(records)
    state.stats["accepted"] += 1
    return web.Response(status=200 if sandbox else 202, headers={"X-Message-Id": message_id})


async def list_messages(request: web.Request) -> web.Response:
    state = request.app[STATE]
    offset = int(request.query.get("offset", 0))
    limit = int(request.query.get("limit", 1000))
    messages = state.snapshot()
    return web.json_response(
        {"total": len(messages), "messages": messages[offset : offset + limit]}
    )


async def clear_messages(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return web.Response(status=204)


async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(asdict(request.app[STATE].faults))


async def set_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        state.faults.update(await request.json())
    except (ValueError, TypeError) as exc:
        return _error(str(exc))
    return web.json_response(asdict(state.faults))


async def get_stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    distinct = len(state.send_ids())
    return web.json_response(
        {**state.stats, "messages": len(state.messages), "distinct_send_ids": distinct}
    )


def build_app(state: SinkState, extensions: Iterable[Extension] = ()) -> web.Application:
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app[STATE] = state
    app.router.add_post("/v3/mail/send", mail_send)
    app.router.add_get("/_sink/messages", list_messages)
    app.router.add_delete("/_sink/messages", clear_messages)
    app.router.add_get("/_sink/faults", get_faults)
    app.router.add_post("/_sink/faults", set_faults)
    app.router.add_get("/_sink/stats", get_stats)
    for register in extensions:
        register(app)
    return app


def serve(port: int, host: str = "127.0.0.1", **options: Any) -> None:
    """Run a sink in the foreground until interrupted (the `lifecycle sink` command)."""
    app = build_app(make_state(**options), extensions=[suppressions.register])
    web.run_app(app, host=host, port=port, access_log=None, backlog=2048, print=None)
