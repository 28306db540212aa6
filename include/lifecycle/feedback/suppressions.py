"""The suppression list: who must not get the next email, and its sync with SendGrid.

Rows come from three places: our unsubscribe links (`source="link"`), the event webhook
(`"webhook"`) and the SendGrid suppression lists (`"sync"`). A row is unique on (email, scope),
scope being "global" or "group:<asm group id>"; adding one that exists changes nothing. Our own
unsubscribes are pushed to SendGrid's global list and marked with `pushed_at`.

The sync is incremental: each list is pulled from its newest entry seen so far (less a day of
overlap); ASM groups have no paging or time filter and are pulled whole. Blocks are not pulled:
SendGrid does not suppress future sends to a blocked address either.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
from sqlalchemy import Connection, Engine, delete, func, select, update

from lifecycle.core import addresses, policies
from lifecycle.core.config import Settings
from lifecycle.store import dialect
from lifecycle.store.schema import resubscribes, suppressions

PAGE_LIMIT = 500  # SendGrid's maximum page size for the suppression lists
PUSH_CHUNK = 1_000
SYNC_OVERLAP = timedelta(days=1)
# SendGrid list → our reason
LISTS = {"bounces": "bounce", "spam_reports": "spamreport", "invalid_emails": "invalid"}


def row(email: str, scope: str, reason: str, source: str, at: datetime) -> dict[str, Any]:
    return {
        "email": email.strip().lower(),
        "scope": scope,
        "reason": reason,
        "source": source,
        "created_at": at,
    }


def add(conn: Connection, rows: list[dict[str, Any]]) -> int:
    """Insert suppressions; existing (email, scope) pairs are kept. Returns how many are new."""
    valid = [r for r in rows if r["email"] and len(r["email"]) <= 320]
    # An erased person's address comes back from SendGrid's lists and events: their hashed
    # suppression covers it, and the plaintext is not stored again.
    erased = policies.erased_inboxes(conn, [r["email"] for r in valid])
    valid = [r for r in valid if addresses.inbox(r["email"]) not in erased]
    if not valid:
        return 0
    statement = (
        dialect.insert(conn, suppressions).on_conflict_do_nothing().returning(suppressions.c.id)
    )
    return len(conn.execute(statement, valid).all())


def unsubscribe(engine: Engine, email: str, at: datetime) -> bool:
    """Record a global unsubscribe from our own link. True if it is new."""
    with engine.begin() as conn:
        return add(conn, [row(email, "global", "unsubscribe", "link", at)]) == 1


# --- SendGrid API client ------------------------------------------------------------------
class SendGridAPIError(RuntimeError):
    """A SendGrid API call failed; the message names the call, never the key."""


class SuppressionClient:
    """The SendGrid suppression endpoints we use: paged reads, global unsubscribe writes.

    Waits out 429s until `X-RateLimit-Reset` (and pauses when `X-RateLimit-Remaining` hits 0),
    retries 5xx and connection errors with backoff, and gives up after `max_attempts`.
    """

    def __init__(
        self,
        api_key: str,
        host: str = "https://api.sendgrid.com",
        *,
        timeout: float = 30.0,
        max_attempts: int = 5,
        max_wait: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = httpx.Client(
            base_url=host.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout, connect=10.0),
        )
        self._max_attempts = max_attempts
        self._max_wait = max_wait
        self._sleep = sleep
        self._clock = clock
        self.requests = 0
        self.waited = 0.0

    def __repr__(self) -> str:
        return f"SuppressionClient({self._http.base_url})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SuppressionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wait(self, seconds: float) -> None:
        seconds = min(max(seconds, 0.0), self._max_wait)
        self.waited += seconds
        self._sleep(seconds)

    def _until_reset(self, response: httpx.Response) -> float | None:
        reset = response.headers.get("X-RateLimit-Reset")
        try:
            return float(reset) - self._clock() + random.uniform(0, 0.25) if reset else None
        except ValueError:
            return None

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(1, self._max_attempts + 1):
            self.requests += 1
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self._max_attempts:
                    raise SendGridAPIError(f"{method} {path}: {type(exc).__name__}") from None
                self._wait(random.uniform(0, 2**attempt))
                continue
            if response.status_code == 429 or response.status_code >= 500:
                if attempt == self._max_attempts:
                    break
                wait = self._until_reset(response) if response.status_code == 429 else None
                self._wait(wait if wait is not None else random.uniform(0, 2**attempt))
                continue
            if response.status_code >= 400:
                raise SendGridAPIError(
                    f"{method} {path}: HTTP {response.status_code} {response.text[:300]}"
                )
            if response.headers.get("X-RateLimit-Remaining") == "0":
                self._wait(self._until_reset(response) or 0.0)
            return response
        raise SendGridAPIError(
            f"{method} {path}: HTTP {response.status_code} after {self._max_attempts} attempts"
        )

    def paged(self, path: str, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every item of a limit/offset list, following the `Link: rel="next"` header."""
        offset, following = 0, None
        while True:
            if following:
                response = self.request("GET", following)
            else:
                params = {**filters, "limit": PAGE_LIMIT, "offset": offset}
                response = self.request("GET", path, params=params)
            page = response.json()
            yield from page
            if len(page) < PAGE_LIMIT:
                return
            offset += len(page)
            following = response.links.get("next", {}).get("url")

    def suppression_list(self, name: str, start_time: int = 0) -> Iterator[dict[str, Any]]:
        """bounces, blocks, spam_reports, invalid_emails or unsubscribes (global), created at
        or after `start_time` (unix seconds)."""
        filters = {"start_time": start_time} if start_time else {}
        return self.paged(f"/v3/suppression/{name}", **filters)

    def group_ids(self) -> list[int]:
        return [int(group["id"]) for group in self.request("GET", "/v3/asm/groups").json()]

    def group_suppressions(self, group_id: int) -> list[str]:
        return list(self.request("GET", f"/v3/asm/groups/{group_id}/suppressions").json())

    def add_global_unsubscribes(self, emails: list[str]) -> None:
        self.request("POST", "/v3/asm/suppressions/global", json={"recipient_emails": emails})

    def add_group_suppressions(self, group_id: int, emails: list[str]) -> None:
        path = f"/v3/asm/groups/{group_id}/suppressions"
        self.request("POST", path, json={"recipient_emails": emails})

    def delete_group_suppression(self, group_id: int, email: str) -> None:
        self.request("DELETE", f"/v3/asm/groups/{group_id}/suppressions/{quote(email, safe='@')}")


# --- sync ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyncResult:
    pulled: int  # suppressions read from SendGrid
    added: int  # of those, new to our table
    pushed: int  # our unsubscribes sent to SendGrid's global list
    requests: int
    group_pushed: int = 0  # our topic unsubscribes sent to SendGrid's groups
    lifted: int = 0  # group suppressions lifted: ours at SendGrid, SendGrid's in ours

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _created(item: dict[str, Any], now: datetime) -> datetime:
    created = item.get("created")
    return datetime.fromtimestamp(created, UTC) if isinstance(created, int) else now


def watermarks(engine: Engine) -> dict[str, int]:
    """Per reason, where the next pull of its list starts: the newest entry it gave us, less
    an overlap for entries SendGrid records late. A list never pulled starts from the beginning.
    """
    newest = func.max(suppressions.c.created_at)
    query = (
        select(suppressions.c.reason, newest)
        .where(suppressions.c.source == "sync", suppressions.c.scope == "global")
        .group_by(suppressions.c.reason)
    )
    with engine.connect() as conn:
        found = conn.execute(query).all()
    return {reason: max(0, int((at - SYNC_OVERLAP).timestamp())) for reason, at in found}


def pulled_rows(
    client: SuppressionClient,
    now: datetime,
    since: dict[str, int],
    groups: dict[int, set[str]] | None = None,
) -> Iterator[dict[str, Any]]:
    """SendGrid's suppressions (lists from `since[reason]` on; groups whole) as rows of ours.
    `groups` receives each group's whole list (as inboxes)."""
    for name, reason in (*LISTS.items(), ("unsubscribes", "unsubscribe")):
        for item in client.suppression_list(name, since.get(reason, 0)):
            if not isinstance(item.get("email"), str):
                continue
            yield row(item["email"], "global", reason, "sync", _created(item, now))
    for group_id in client.group_ids():
        emails = client.group_suppressions(group_id)
        if groups is not None:
            groups[group_id] = {addresses.inbox(email) for email in emails}
        for email in emails:
            yield row(email, f"group:{group_id}", "group_unsubscribe", "sync", now)


def _chunks(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def push_unsubscribes(engine: Engine, client: SuppressionClient, now: datetime) -> int:
    """Send our link unsubscribes not yet pushed to SendGrid's global list; mark them pushed."""
    pending = select(suppressions.c.id, suppressions.c.email).where(
        suppressions.c.source == "link",
        suppressions.c.scope == "global",
        suppressions.c.pushed_at.is_(None),
    )
    with engine.connect() as conn:
        rows = conn.execute(pending.order_by(suppressions.c.id)).all()
    for start in range(0, len(rows), PUSH_CHUNK):
        part = rows[start : start + PUSH_CHUNK]
        client.add_global_unsubscribes([r.email for r in part])
        with engine.begin() as conn:
            conn.execute(
                update(suppressions)
                .where(suppressions.c.id.in_([r.id for r in part]))
                .values(pushed_at=now)
            )
    return len(rows)


def _pending_group_pushes(conn: Connection) -> dict[int, list[tuple[int, str]]]:
    """Our topic unsubscribes not yet at SendGrid: group id → [(row id, email)]."""
    query = select(suppressions.c.id, suppressions.c.email, suppressions.c.scope).where(
        suppressions.c.source == "link",
        suppressions.c.scope.like("group:%"),
        suppressions.c.pushed_at.is_(None),
    )
    pending: dict[int, list[tuple[int, str]]] = {}
    for row_id, email, scope in conn.execute(query.order_by(suppressions.c.id)):
        pending.setdefault(int(scope.removeprefix("group:")), []).append((row_id, email))
    return pending


def push_group_changes(engine: Engine, client: SuppressionClient, now: datetime) -> tuple[int, int]:
    """Topic choices made on our preference page, to SendGrid's groups: unsubscribes added
    (marked `pushed_at`), resubscribes lifted (their row deleted). Returns (added, lifted)."""
    with engine.connect() as conn:
        pending = _pending_group_pushes(conn)
        lifts = conn.execute(select(resubscribes).order_by(resubscribes.c.id)).all()
    pushed = 0
    for group_id, rows in pending.items():
        for start in range(0, len(rows), PUSH_CHUNK):
            part = rows[start : start + PUSH_CHUNK]
            client.add_group_suppressions(group_id, [email for _, email in part])
            with engine.begin() as conn:
                ids = [row_id for row_id, _ in part]
                conn.execute(
                    update(suppressions).where(suppressions.c.id.in_(ids)).values(pushed_at=now)
                )
            pushed += len(part)
    for lift in lifts:
        client.delete_group_suppression(int(lift.scope.removeprefix("group:")), lift.email)
        with engine.begin() as conn:
            conn.execute(delete(resubscribes).where(resubscribes.c.id == lift.id))
    return pushed, len(lifts)


def lift_resubscribed(engine: Engine, groups: dict[int, set[str]]) -> int:
    """Group suppressions SendGrid no longer has (the person chose the group again there) are
    lifted in ours; our own not pushed yet are kept."""
    lifted = 0
    with engine.begin() as conn:
        for group_id, theirs in groups.items():
            query = select(suppressions.c.id, suppressions.c.email).where(
                suppressions.c.scope == f"group:{group_id}",
                ~((suppressions.c.source == "link") & suppressions.c.pushed_at.is_(None)),
            )
            gone = [i for i, email in conn.execute(query) if addresses.inbox(email) not in theirs]
            if gone:
                lifted += conn.execute(
                    delete(suppressions).where(suppressions.c.id.in_(gone))
                ).rowcount
    return lifted


def sync(engine: Engine, client: SuppressionClient, now: datetime) -> SyncResult:
    """Push our topic choices to SendGrid's groups, pull SendGrid's new suppressions (and the
    group suppressions it lifted) into ours, then push our global unsubscribes. Idempotent."""
    pulled = added = 0
    requests_before = client.requests
    group_pushed, lifted = push_group_changes(engine, client, now)
    groups: dict[int, set[str]] = {}
    for chunk in _chunks(pulled_rows(client, now, watermarks(engine), groups), PAGE_LIMIT * 4):
        pulled += len(chunk)
        with engine.begin() as conn:
            added += add(conn, chunk)
    lifted += lift_resubscribed(engine, groups)
    pushed = push_unsubscribes(engine, client, now)
    requests = client.requests - requests_before
    return SyncResult(
        pulled=pulled,
        added=added,
        pushed=pushed,
        requests=requests,
        group_pushed=group_pushed,
        lifted=lifted,
    )


def sync_with_settings(engine: Engine, settings: Settings, now: datetime) -> SyncResult:
    """What the suppression_sync DAG and `lifecycle suppressions sync` run."""
    if not settings.sendgrid_api_key:
        raise SendGridAPIError("no SendGrid API key configured (SENDGRID_API_KEY / connection)")
    with SuppressionClient(settings.sendgrid_api_key, settings.sendgrid_host) as client:
        return sync(engine, client, now)
