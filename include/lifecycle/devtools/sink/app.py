"""A local SendGrid-compatible server for development, tests and benchmarks (`lifecycle sink`).

`POST /v3/mail/send` validates like SendGrid (bearer key, field types, required fields, 1000
personalizations / recipients, no duplicate recipient, string custom_args < 10,000 UTF-8
bytes, at most 10 unique non-empty ASCII categories of <= 255 chars, non-empty content with
text/plain then text/html first, reply_to or reply_to_list) and answers 400 with SendGrid's
error shape (any malformed body, never a 500), or 202 with an `X-Message-Id`. Accepted
messages are kept in a `SinkState` that in-process tests read directly (`GET /_sink/messages`
out of process).

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

from lifecycle.devtools import sink_suppressions

STATE: web.AppKey[SinkState] = web.AppKey("sink_state")
MAX_RECIPIENTS = 1000
MAX_CUSTOM_ARGS_BYTES = 10_000
MAX_ADDRESS_LENGTH = 320
MAX_CATEGORIES = 10
MAX_CATEGORY_LENGTH = 255
MAX_GROUPS_TO_DISPLAY = 25
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


Problem = tuple[str, str | None]

# Field types of the mail/send OpenAPI, as JSON Schema names (SendGrid's errors read
# "Invalid type. Expected: object, given: string.").
MESSAGE_FIELDS = {
    "personalizations": "array",
    "from": "object",
    "reply_to": "object",
    "reply_to_list": "array",
    "subject": "string",
    "content": "array",
    "attachments": "array",
    "template_id": "string",
    "headers": "object",
    "categories": "array",
    # The OpenAPI says string, but SendGrid answers a string with "Expected: object".
    "custom_args": "object",
    "send_at": "integer",
    "batch_id": "string",
    "asm": "object",
    "ip_pool_name": "string",
    "mail_settings": "object",
    "tracking_settings": "object",
}
PERSONALIZATION_FIELDS = {
    "to": "array",
    "cc": "array",
    "bcc": "array",
    "from": "object",
    "subject": "string",
    "headers": "object",
    "substitutions": "object",
    "dynamic_template_data": "object",
    "custom_args": "object",
    "send_at": "integer",
}
# bool before int: True is an int in Python but a boolean in JSON.
JSON_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (list, "array"),
    (dict, "object"),
)
# SendGrid wants text/plain first, then (AMP,) then text/html, then any other type.
CONTENT_ORDER = ("text/plain", "text/x-amp-html", "text/html")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    for kind, name in JSON_TYPES:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _wrong_type(value: Any, expected: str, field_name: str) -> Problem | None:
    given = _json_type(value)
    if given == expected:
        return None
    return f"Invalid type. Expected: {expected}, given: {given}.", field_name


def _field_types(obj: dict[str, Any], expected: dict[str, str], prefix: str) -> Problem | None:
    for name, kind in expected.items():
        if name in obj and (problem := _wrong_type(obj[name], kind, prefix + name)):
            return problem
    return None


def _is_email(value: Any) -> bool:
    return isinstance(value, str) and "@" in value and len(value) <= MAX_ADDRESS_LENGTH


def _address(
    address: Any,
    where: str,
    *,
    email_field: str | None = None,
    message: str = "Does not contain a valid address.",
) -> Problem | None:
    if not isinstance(address, dict) or not _is_email(address.get("email")):
        return message, email_field or where
    if "name" in address:
        return _wrong_type(address["name"], "string", f"{where}.name")
    return None


def _recipients(item: dict[str, Any], where: str, seen: set[str]) -> Problem | None:
    """to/cc/bcc addresses; `seen` collects them across the request: a repeat is a 400."""
    for kind in ("to", "cc", "bcc"):
        for address in item.get(kind, []):
            if problem := _address(address, f"{where}.{kind}"):
                return problem
            email = address["email"].lower()
            if email in seen:
                return (
                    "Each email address in the personalization block should be unique "
                    "between to, cc, and bcc.",
                    f"{where}.{kind}",
                )
            seen.add(email)
    return None


def _custom_args_size(args: dict[str, str]) -> int:
    # UTF-8 bytes: SendGrid counts 'é' as 2 bytes, not as the 6 of a \u00e9 escape.
    text = json.dumps(args, ensure_ascii=False, separators=(",", ":"))
    return len(text.encode("utf-8", "surrogatepass"))


def _custom_args(message_args: dict[str, Any], args: dict[str, Any], where: str) -> Problem | None:
    field_name = f"{where}.custom_args"
    if any(not isinstance(value, str) for value in args.values()):
        return "Custom args values must be strings.", field_name
    # Personalization keys override message-level ones; the limit applies to the merge.
    if _custom_args_size({**message_args, **args}) >= MAX_CUSTOM_ARGS_BYTES:
        return "Custom args must be less than 10000 bytes.", field_name
    return None


def _personalization(
    item: Any, where: str, seen: set[str], message_args: dict[str, Any]
) -> Problem | None:
    if not isinstance(item, dict):
        return _wrong_type(item, "object", where)
    if problem := _field_types(item, PERSONALIZATION_FIELDS, f"{where}."):
        return problem
    if not item.get("to"):
        return "The to parameter is required for all personalization objects.", f"{where}.to"
    if "subject" in item and not item["subject"]:
        return "The subject must be at least one character long.", f"{where}.subject"
    if problem := _recipients(item, where, seen):
        return problem
    if "from" in item and (problem := _address(item["from"], f"{where}.from")):
        return problem
    return _custom_args(message_args, item.get("custom_args", {}), where)


def _personalizations(body: dict[str, Any]) -> Problem | None:
    items = body.get("personalizations")
    if not items:
        return "You must have at least one personalization.", "personalizations"
    if len(items) > MAX_RECIPIENTS:
        return "The personalizations field must have at most 1000 items.", "personalizations"
    message_args = body.get("custom_args", {})
    if any(not isinstance(value, str) for value in message_args.values()):
        return "Custom args values must be strings.", "custom_args"
    seen: set[str] = set()
    for index, item in enumerate(items):
        if problem := _personalization(item, f"personalizations.{index}", seen, message_args):
            return problem
    if len(seen) > MAX_RECIPIENTS:
        return "The total number of recipients must be no more than 1000.", "personalizations"
    return None


def _sender(body: dict[str, Any]) -> Problem | None:
    return _address(
        body.get("from"),
        "from",
        email_field="from.email",
        message="The from object must be provided for every email send.",
    )


def _reply_to(body: dict[str, Any]) -> Problem | None:
    if "reply_to" in body and "reply_to_list" in body:
        return (
            "You can use either the reply_to property or reply_to_list property but not both.",
            "reply_to_list",
        )
    if "reply_to" in body:
        return _address(body["reply_to"], "reply_to")
    addresses = body.get("reply_to_list", [])
    if len(addresses) > MAX_RECIPIENTS:
        return "The reply_to_list must have at most 1000 items.", "reply_to_list"
    seen: set[str] = set()
    for index, address in enumerate(addresses):
        if problem := _address(address, f"reply_to_list.{index}"):
            return problem
        if address["email"].lower() in seen:
            return "The reply_to_list addresses must be unique.", f"reply_to_list.{index}"
        seen.add(address["email"].lower())
    return None


def _subject(body: dict[str, Any]) -> Problem | None:
    if "subject" in body and not body["subject"]:
        return "The subject must be at least one character long.", "subject"
    if "template_id" in body or body.get("subject"):
        return None
    if all(item.get("subject") for item in body["personalizations"]):
        return None
    return (
        "The subject is required. You can get around this requirement if you use a template "
        "with a subject defined or if every personalization has a subject defined.",
        "subject",
    )


def _content_part(part: Any, where: str) -> Problem | None:
    if not isinstance(part, dict):
        return _wrong_type(part, "object", where)
    for name in ("type", "value"):
        if not isinstance(part.get(name), str) or not part[name]:
            return (
                f"The content {name} must be a string at least one character in length.",
                f"{where}.{name}",
            )
    return None


def _content(body: dict[str, Any]) -> Problem | None:
    content = body.get("content", [])
    if not content and "template_id" not in body:
        return "Unless a valid template_id is provided, the content parameter is required.", (
            "content"
        )
    for index, part in enumerate(content):
        if problem := _content_part(part, f"content.{index}"):
            return problem
    types = [part["type"] for part in content]
    if types.count("text/plain") > 1 or types.count("text/html") > 1:
        return "If present, text/plain and text/html may only be provided once.", "content"
    expected = [kind for kind in CONTENT_ORDER if kind in types]
    for index, (kind, wanted) in enumerate(zip(types, expected, strict=False)):
        if kind != wanted:
            return (
                "If present, text/plain content must be first, followed by text/html, "
                "followed by any other content.",
                f"content.{index}.type",
            )
    return None


def _categories(body: dict[str, Any]) -> Problem | None:
    categories = body.get("categories", [])
    for category in categories:
        if not isinstance(category, str) or not category or not category.isascii():
            return "Category names must be non-empty ASCII strings.", "categories"
        if len(category) > MAX_CATEGORY_LENGTH:
            return "Category names must be at most 255 characters.", "categories"
    if len(categories) > MAX_CATEGORIES:
        return "Too many categories: at most 10 may be used.", "categories"
    if len(set(categories)) != len(categories):
        return "Categories must be unique.", "categories"
    return None


def _settings(body: dict[str, Any]) -> Problem | None:
    """mail_settings / tracking_settings hold objects whose `enable` is a boolean."""
    for group in ("mail_settings", "tracking_settings"):
        for name, setting in body.get(group, {}).items():
            where = f"{group}.{name}"
            if problem := _wrong_type(setting, "object", where):
                return problem
            if "enable" in setting and (
                problem := _wrong_type(setting["enable"], "boolean", f"{where}.enable")
            ):
                return problem
    return None


def _asm(body: dict[str, Any]) -> Problem | None:
    if "asm" not in body:
        return None
    asm = body["asm"]
    if problem := _wrong_type(asm.get("group_id"), "integer", "asm.group_id"):
        return problem
    groups = asm.get("groups_to_display", [])
    if problem := _wrong_type(groups, "array", "asm.groups_to_display"):
        return problem
    if len(groups) > MAX_GROUPS_TO_DISPLAY or any(_json_type(g) != "integer" for g in groups):
        return "groups_to_display must be at most 25 group ids.", "asm.groups_to_display"
    return None


def _message_types(body: dict[str, Any]) -> Problem | None:
    return _field_types(body, MESSAGE_FIELDS, "")


# In order; each check may rely on the types that the checks before it verified.
CHECKS: tuple[Callable[[dict[str, Any]], Problem | None], ...] = (
    _message_types,
    _personalizations,
    _sender,
    _reply_to,
    _content,
    _subject,
    _categories,
    _settings,
    _asm,
)


def validate(body: Any) -> Problem | None:
    """SendGrid's documented mail/send rules; returns (message, field) of the first problem.

    Types are checked before any value is used, so that no body can crash the sink (a 500
    would make our transport retry a request that can never succeed)."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object.", None
    for check in CHECKS:
        if problem := check(body):
            return problem
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
    except (ValueError, LookupError, RecursionError):  # bad JSON or UTF-8, charset, nesting
        state.stats["400"] += 1
        return _error("Bad Request: the body is not valid JSON.")
    problem = validate(body)
    if problem is not None:
        state.stats["400"] += 1
        return _error(*problem)

    message_id = secrets.token_urlsafe(16)[:22]
    sandbox = body.get("mail_settings", {}).get("sandbox_mode", {}).get("enable", False)
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
