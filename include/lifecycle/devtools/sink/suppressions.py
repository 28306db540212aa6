"""SendGrid's suppression endpoints, emulated in memory for the local sink.

`register(app)` adds the routes to the sink's aiohttp app; the data lives in a
`SuppressionStore` (seed it in tests, read `app[SUPPRESSIONS]`). Behaviour follows the real
API where our sync depends on it: limit <= 500 with offset paging, `start_time` (created at or
after) and a `Link: rel="next"` header; groups listed whole, added to (POST) and lifted from
(DELETE one address); POST to the global list; Bearer
auth; and optional rate limiting (429 with `X-RateLimit-Reset`) so that the client's waiting
is exercised over real HTTP.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

LIST_NAMES = ("bounces", "blocks", "spam_reports", "invalid_emails", "unsubscribes")
MAX_LIMIT = 500


@dataclass
class SuppressionStore:
    lists: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {name: [] for name in LIST_NAMES}
    )
    groups: dict[int, list[str]] = field(default_factory=dict)
    rate_limit: int | None = None  # requests allowed per window; None = unlimited
    window_seconds: float = 1.0
    requests: int = 0
    throttled: int = 0  # 429s answered
    _window_start: float = 0.0
    _window_count: int = 0

    def seed(self, name: str, emails: list[str], created: int = 1_700_000_000) -> None:
        """Add addresses to a list, e.g. seed("bounces", [...])."""
        for email in emails:
            self.lists[name].append(
                {"email": email, "created": created, "reason": f"seeded {name}", "status": ""}
            )

    def admit(self, now: float) -> tuple[bool, int, int]:
        """(allowed, remaining, reset epoch) under the fixed-window rate limit."""
        if now - self._window_start >= self.window_seconds:
            self._window_start, self._window_count = now, 0
        reset = math.ceil(self._window_start + self.window_seconds)
        if self.rate_limit is None:
            return True, 1_000_000, reset
        if self._window_count >= self.rate_limit:
            return False, 0, reset
        self._window_count += 1
        return True, self.rate_limit - self._window_count, reset


SUPPRESSIONS = web.AppKey("suppressions", SuppressionStore)


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer auth and rate limiting for the suppression routes only."""
    if not request.path.startswith(("/v3/suppression/", "/v3/asm/")):
        return await handler(request)
    store = request.app[SUPPRESSIONS]
    store.requests += 1
    if not request.headers.get("Authorization", "").startswith("Bearer "):
        return _errors(401, "authorization required")
    allowed, remaining, reset = store.admit(time.time())
    limits = {
        "X-RateLimit-Limit": str(store.rate_limit or 1_000_000),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(reset),
    }
    if not allowed:
        store.throttled += 1
        response: web.StreamResponse = _errors(429, "too many requests")
    else:
        response = await handler(request)
    response.headers.update(limits)
    return response


def _errors(status: int, message: str) -> web.Response:
    return web.json_response({"errors": [{"message": message, "field": None}]}, status=status)


async def list_suppressions(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    store = request.app[SUPPRESSIONS]
    if name not in store.lists:
        return _errors(404, f"unknown list {name}")
    try:
        limit = int(request.query.get("limit", MAX_LIMIT))
        offset = int(request.query.get("offset", 0))
        start_time = int(request.query.get("start_time", 0))
    except ValueError:
        return _errors(400, "limit, offset and start_time must be integers")
    if not 1 <= limit <= MAX_LIMIT or offset < 0:
        return _errors(400, f"limit must be 1..{MAX_LIMIT}, offset >= 0")
    items = [item for item in store.lists[name] if item["created"] >= start_time]
    response = web.json_response(items[offset : offset + limit])
    if offset + limit < len(items):
        following = request.url.update_query(limit=limit, offset=offset + limit)
        response.headers["Link"] = f'<{following}>; rel="next"'
    return response


async def add_global(request: web.Request) -> web.Response:
    try:
        emails = (await request.json())["recipient_emails"]
    except (ValueError, KeyError, TypeError):
        return _errors(400, "recipient_emails is required")
    if not isinstance(emails, list) or not all(isinstance(e, str) for e in emails):
        return _errors(400, "recipient_emails must be a list of strings")
    unsubscribes = request.app[SUPPRESSIONS].lists["unsubscribes"]
    known = {item["email"] for item in unsubscribes}
    for email in emails:
        if email not in known:
            unsubscribes.append({"email": email, "created": int(time.time())})
            known.add(email)
    return web.json_response({"recipient_emails": emails}, status=201)


async def get_global(request: web.Request) -> web.Response:
    email = request.match_info["email"]
    unsubscribes = request.app[SUPPRESSIONS].lists["unsubscribes"]
    found = any(item["email"] == email for item in unsubscribes)
    return web.json_response({"recipient_email": email} if found else {})


async def list_groups(request: web.Request) -> web.Response:
    groups = request.app[SUPPRESSIONS].groups
    return web.json_response([{"id": gid, "name": f"group {gid}"} for gid in sorted(groups)])


async def group_suppressions(request: web.Request) -> web.Response:
    groups = request.app[SUPPRESSIONS].groups
    try:
        emails = groups[int(request.match_info["group_id"])]
    except (KeyError, ValueError):
        return _errors(404, "unknown group")
    return web.json_response(emails)


async def add_to_group(request: web.Request) -> web.Response:
    """Like SendGrid: a group that does not exist puts the addresses on the global list."""
    try:
        group_id = int(request.match_info["group_id"])
        emails = (await request.json())["recipient_emails"]
    except (ValueError, KeyError, TypeError):
        return _errors(400, "recipient_emails is required")
    if not isinstance(emails, list) or not all(isinstance(e, str) for e in emails):
        return _errors(400, "recipient_emails must be a list of strings")
    store = request.app[SUPPRESSIONS]
    if group_id not in store.groups:
        return await add_global(request)
    members = store.groups[group_id]
    members.extend(email for email in dict.fromkeys(emails) if email not in members)
    return web.json_response({"recipient_emails": emails}, status=201)


async def delete_from_group(request: web.Request) -> web.Response:
    groups = request.app[SUPPRESSIONS].groups
    try:
        members = groups[int(request.match_info["group_id"])]
    except (KeyError, ValueError):
        return _errors(404, "unknown group")
    email = request.match_info["email"]
    if email in members:
        members.remove(email)
    return web.Response(status=204)


def register(app: web.Application, store: SuppressionStore | None = None) -> None:
    """Add the suppression endpoints (and their store at `app[SUPPRESSIONS]`) to the sink."""
    app[SUPPRESSIONS] = store or SuppressionStore()
    app.middlewares.append(_guard)
    app.router.add_get("/v3/suppression/{name}", list_suppressions)
    app.router.add_post("/v3/asm/suppressions/global", add_global)
    app.router.add_get("/v3/asm/suppressions/global/{email}", get_global)
    app.router.add_get("/v3/asm/groups", list_groups)
    app.router.add_get("/v3/asm/groups/{group_id}/suppressions", group_suppressions)
    app.router.add_post("/v3/asm/groups/{group_id}/suppressions", add_to_group)
    app.router.add_delete("/v3/asm/groups/{group_id}/suppressions/{email}", delete_from_group)
