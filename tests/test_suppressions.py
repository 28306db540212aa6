"""Suppression sync over real HTTP against the local sink's emulated SendGrid endpoints."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import Engine, select

from lifecycle.devtools.sink.suppressions import SuppressionStore, register
from lifecycle.devtools.sink.thread import SinkHandle, run_sink_in_thread
from lifecycle.feedback import suppressions
from lifecycle.store.schema import suppressions as table

API_KEY = "SG.test-key-never-shown"
NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


@pytest.fixture
def store() -> SuppressionStore:
    store = SuppressionStore()
    store.seed("bounces", [f"bounce{n}@example.com" for n in range(1203)])  # three pages
    store.seed("blocks", ["blocked@example.com"])
    store.seed("spam_reports", ["Complainer@Example.com"])
    store.seed("invalid_emails", ["not-an-inbox@example.com"])
    store.seed("unsubscribes", ["gone@example.com"])
    store.groups = {7: ["weekly-off@example.com"], 9: []}
    return store


@pytest.fixture
def sink(store: SuppressionStore) -> Iterator[SinkHandle]:
    with run_sink_in_thread(extensions=[functools.partial(register, store=store)]) as handle:
        yield handle


@pytest.fixture
def client(sink: SinkHandle) -> Iterator[suppressions.SuppressionClient]:
    with suppressions.SuppressionClient(API_KEY, sink.url) as api:
        yield api


def ours(engine: Engine) -> dict[tuple[str, str], tuple[str, str]]:
    with engine.connect() as conn:
        result = conn.execute(
            select(table.c.email, table.c.scope, table.c.reason, table.c.source)
        ).all()
    return {(r.email, r.scope): (r.reason, r.source) for r in result}


def expected_from(store: SuppressionStore) -> dict[tuple[str, str], tuple[str, str]]:
    reasons = {**suppressions.LISTS, "unsubscribes": "unsubscribe"}
    expected = {
        (item["email"].lower(), "global"): (reason, "sync")
        for name, reason in reasons.items()
        for item in store.lists[name]
    }
    for group_id, emails in store.groups.items():
        for email in emails:
            expected[(email, f"group:{group_id}")] = ("group_unsubscribe", "sync")
    return expected


def test_sync_pulls_every_list_paged_and_skips_blocks(
    engine: Engine, store: SuppressionStore, client: suppressions.SuppressionClient
) -> None:
    expected = expected_from(store)
    result = suppressions.sync(engine, client, NOW)

    assert ours(engine) == expected
    assert ("blocked@example.com", "global") not in ours(engine)
    assert result.pulled == result.added == len(expected)
    # bounces take ceil(1203 / 500) pages; the others one each, plus groups
    pages = -(-len(store.lists["bounces"]) // suppressions.PAGE_LIMIT)
    assert result.requests == pages + 3 + 1 + len(store.groups)


def test_sync_is_idempotent(
    engine: Engine, store: SuppressionStore, client: suppressions.SuppressionClient
) -> None:
    suppressions.sync(engine, client, NOW)
    before = ours(engine)
    again = suppressions.sync(engine, client, NOW)
    assert again.added == 0 and again.pushed == 0
    assert ours(engine) == before


def test_later_syncs_pull_only_what_is_new(
    engine: Engine, store: SuppressionStore, client: suppressions.SuppressionClient
) -> None:
    suppressions.sync(engine, client, NOW)
    newest = store.lists["bounces"][0]["created"] + 10 * 86_400
    store.seed("bounces", ["new1@example.com", "new2@example.com"], created=newest)
    suppressions.sync(engine, client, NOW)  # picks them up (and moves the bounce watermark)

    third = suppressions.sync(engine, client, NOW)

    assert ours(engine) == expected_from(store)
    overlap = suppressions.SYNC_OVERLAP.total_seconds()
    recent = [
        item
        for name in ("bounces", "spam_reports", "invalid_emails", "unsubscribes")
        for item in store.lists[name]
        if item["created"] >= max(i["created"] for i in store.lists[name]) - overlap
    ]
    grouped = sum(len(emails) for emails in store.groups.values())
    assert third.pulled == len(recent) + grouped
    assert third.requests == 4 + 1 + len(store.groups)  # one page per list now


def test_our_unsubscribes_are_pushed_once(
    engine: Engine, store: SuppressionStore, client: suppressions.SuppressionClient
) -> None:
    mine = ["Link-Click@Example.com", "another@example.com"]
    for email in mine:
        assert suppressions.unsubscribe(engine, email, NOW)
    assert not suppressions.unsubscribe(engine, mine[0], NOW)  # a second click changes nothing

    first = suppressions.sync(engine, client, NOW)
    second = suppressions.sync(engine, client, NOW)

    remote = {item["email"] for item in store.lists["unsubscribes"]}
    assert {email.lower() for email in mine} <= remote
    assert (first.pushed, second.pushed) == (len(mine), 0)
    with engine.connect() as conn:
        pushed = conn.execute(select(table.c.pushed_at).where(table.c.source == "link")).scalars()
        assert set(pushed) == {NOW}


def test_sync_waits_out_rate_limits(
    engine: Engine, store: SuppressionStore, sink: SinkHandle
) -> None:
    store.rate_limit, store.window_seconds = 3, 1.0
    with suppressions.SuppressionClient(API_KEY, sink.url) as api:
        result = suppressions.sync(engine, api, NOW)
        waited = api.waited

    assert ours(engine) == expected_from(store)
    assert waited > 0  # paused when X-RateLimit-Remaining reached 0
    assert result.requests == store.requests


def test_a_429_is_retried_after_the_reset(store: SuppressionStore, sink: SinkHandle) -> None:
    store.rate_limit, store.window_seconds = 1, 1.0
    headers = {"Authorization": "Bearer other-client"}
    assert httpx.get(f"{sink.url}/v3/asm/groups", headers=headers).status_code == 200
    with suppressions.SuppressionClient(API_KEY, sink.url) as api:
        assert api.group_ids() == sorted(store.groups)
        assert api.waited > 0
    assert store.throttled >= 1


def test_errors_never_show_the_key(sink: SinkHandle) -> None:
    with suppressions.SuppressionClient(API_KEY, sink.url) as api:
        assert API_KEY not in repr(api)
        with pytest.raises(suppressions.SendGridAPIError) as http_error:
            api.request("GET", "/v3/suppression/no_such_list")
    assert "404" in str(http_error.value)

    closed_port = httpx.URL(sink.url).copy_with(port=1)
    with (
        suppressions.SuppressionClient(API_KEY, str(closed_port), sleep=lambda _: None) as api,
        pytest.raises(suppressions.SendGridAPIError) as network_error,
    ):
        api.group_ids()
    for error in (http_error.value, network_error.value):
        assert API_KEY not in str(error) and API_KEY not in repr(error)
    assert network_error.value.__cause__ is None and network_error.value.__suppress_context__


def test_sink_requires_a_bearer_key(sink: SinkHandle) -> None:
    assert httpx.get(f"{sink.url}/v3/suppression/bounces").status_code == 401
