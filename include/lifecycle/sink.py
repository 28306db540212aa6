"""A local SendGrid-compatible server for development, tests and benchmarks (`lifecycle sink`).

`POST /v3/mail/send` validates like SendGrid (bearer key, required fields, 1000
personalizations / recipients, no duplicate recipient, string custom_args < 10,000 bytes,
at most 10 unique ASCII categories, text/plain before text/html) and answers 400 with
SendGrid's error shape, or 202 with an `X-Message-Id`. Accepted messages are kept in a
`SinkState` that in-process tests read directly (`GET /_sink/messages` out of process).

Faults on demand (at start, or `POST /_sink/faults` with the same JSON fields):
latency (every request), and per-request probabilities of a 429 with `X-RateLimit-*`
headers, a 500/503, a dropped connection (closed before the request is read, nothing stored)
and a slow response (stored, answered after `slow_ms`). `fail_next` forces the next N
requests into one fault kind, for deterministic tests.

Other modules add routes with `build_app(state, extensions=[register])`, `register(app)`
receiving the application (the state is `app[STATE]`).
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from aiohttp import web

from lifecycle import sink_suppressions

STATE: web.AppKey[SinkState] = web.AppKey("sink_state")
MAX_RECIPIENTS = 1000
MAX_CUSTOM_ARGS_BYTES = 10_000
FAULT_KINDS = ("429", "500", "503", "drop", "slow")


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


def _error(message: str, field_name: str | None = None, status: int = 400) -> web.Response:
    body = {"errors": [{"message": message, "field": field_name, "help": None}]}
    return web.json_response(body, status=status)


def validate(body: Any) -> tuple[str, str | None] | None:
    """SendGrid's documented mail/send rules; returns (message, field) of the first problem."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object.", None
    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        return "The personalizations field is required and must have at least one.", (
            "personalizations"
        )
    if len(personalizations) > MAX_RECIPIENTS:
        return "The personalizations field must have at most 1000 items.", "personalizations"
    sender = body.get("from")
    if not isinstance(sender, dict) or not sender.get("email"):
        return "The from object must be provided for every email send.", "from.email"
    seen: set[str] = set()
    total = 0
    for index, item in enumerate(personalizations):
        where = f"personalizations.{index}"
        if not isinstance(item, dict) or not isinstance(item.get("to"), list) or not item["to"]:
            return "The to array is required for all personalization objects.", f"{where}.to"
        for kind in ("to", "cc", "bcc"):
            for address in item.get(kind) or []:
                email = address.get("email") if isinstance(address, dict) else None
                if not isinstance(email, str) or "@" not in email or len(email) > 320:
                    return "Does not contain a valid address.", f"{where}.{kind}"
                if email.lower() in seen:
                    return (
                        "Each email address in the personalization block should be unique "
                        "between to, cc, and bcc.",
                        f"{where}.{kind}",
                    )
                seen.add(email.lower())
                total += 1
        args = {**(body.get("custom_args") or {}), **(item.get("custom_args") or {})}
        if any(not isinstance(value, str) for value in args.values()):
            return "Custom args values must be strings.", f"{where}.custom_args"
        if len(json.dumps(args).encode()) >= MAX_CUSTOM_ARGS_BYTES:
            return "Custom args must be less than 10000 bytes.", f"{where}.custom_args"
    if total > MAX_RECIPIENTS:
        return "The total number of recipients must be no more than 1000.", "personalizations"
    content = body.get("content")
    if "template_id" not in body:
        if not isinstance(content, list) or not content:
            return "Unless a valid template_id is provided, the content parameter is required.", (
                "content"
            )
        types = [part.get("type") for part in content if isinstance(part, dict)]
        if len(types) != len(content) or not all(types):
            return "The content value must be a string at least one character in length.", (
                "content"
            )
        if "text/plain" in types and types[0] != "text/plain":
            return "If present, text/plain content must be first, followed by text/html.", (
                "content.0.type"
            )
        if "text/html" in types and "text/plain" in types and types[1] != "text/html":
            return "If present, text/plain content must be first, followed by text/html.", (
                "content.1.type"
            )
    if not body.get("subject") and not all(p.get("subject") for p in personalizations):
        return "The subject is required unless a template defines one.", "subject"
    categories = body.get("categories") or []
    if len(categories) > 10:
        return "Too many categories: at most 10 may be used.", "categories"
    if len(set(categories)) != len(categories):
        return "Categories must be unique.", "categories"
    for category in categories:
        if not isinstance(category, str) or not category.isascii() or len(category) > 255:
            return "Category names must be ASCII strings of at most 255 characters.", ("categories")
    return None


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
    except (ValueError, UnicodeDecodeError):
        state.stats["400"] += 1
        return _error("Bad Request: the body is not valid JSON.")
    problem = validate(body)
    if problem is not None:
        state.stats["400"] += 1
        return _error(*problem)

    message_id = secrets.token_urlsafe(16)[:22]
    sandbox = bool((body.get("mail_settings") or {}).get("sandbox_mode", {}).get("enable"))
    record = {
        "message_id": message_id,
        "received_at": time.time(),
        "to": [a["email"].lower() for p in body["personalizations"] for a in p["to"]],
        "custom_args": {
            **(body.get("custom_args") or {}),
            **(body["personalizations"][0].get("custom_args") or {}),
        },
        "subject": body.get("subject"),
        "categories": body.get("categories") or [],
        "sandbox": sandbox,
    }
    if state.keep_bodies:
        record["body"] = body
    if fault == "slow":
        state.stats["slow"] += 1
        with state.lock:
            state.messages.append(record)
        await asyncio.sleep(state.faults.slow_ms / 1000)
    else:
        with state.lock:
            state.messages.append(record)
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


def build_app(
    state: SinkState, extensions: Iterable[Callable[[web.Application], None]] = ()
) -> web.Application:
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


class SinkHandle:
    """A sink running on 127.0.0.1 in a background thread; `with` stops it on exit."""

    def __init__(self, state: SinkState, extensions: Iterable[Callable[[web.Application], None]]):
        self.state = state
        self._extensions = list(extensions)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._serve, name="lifecycle-sink", daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or not self.port:
            raise RuntimeError("the sink did not start within 30 s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._runner = web.AppRunner(
                build_app(self.state, self._extensions), access_log=None, handle_signals=False
            )
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
            await site.start()
            self.port = self._runner.addresses[0][1]

        try:
            self._loop.run_until_complete(start())
        finally:
            self._ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        if not self._loop.is_running():
            return

        async def shutdown() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    def __enter__(self) -> SinkHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def run_sink_in_thread(
    extensions: Iterable[Callable[[web.Application], None]] = (), **options: Any
) -> SinkHandle:
    """Start a sink on a free port; options are `make_state`'s (api_keys, keep_bodies, seed,
    latency_ms, rate_429, rate_5xx, rate_drop, rate_slow, slow_ms, fail_next, ...)."""
    return SinkHandle(make_state(**options), extensions)


def serve(port: int, host: str = "127.0.0.1", **options: Any) -> None:
    """Run a sink in the foreground until interrupted (the `lifecycle sink` command)."""
    app = build_app(make_state(**options), extensions=[sink_suppressions.register])
    web.run_app(app, host=host, port=port, access_log=None, backlog=2048, print=None)
