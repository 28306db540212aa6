"""Coupons: unique unguessable codes, one per (campaign, customer, occurrence key), ever."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select

from lifecycle.store import coupons
from lifecycle.store.schema import coupons as coupons_table

AS_OF = datetime(2026, 11, 24, 9, 5, tzinfo=UTC)


def ensure(engine: Engine, keys: list[tuple[int, str]], as_of: datetime = AS_OF, **terms):
    terms = {"discount_percent": 20.0, "valid_days": 7, **terms}
    with engine.begin() as conn:
        return coupons.ensure_coupons(conn, "birthday", keys, as_of=as_of, **terms)


def stored(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(coupons_table)).scalar_one()


def test_codes_are_issued_once_and_kept(engine):
    keys = [(1, "2026"), (2, "2026"), (1, "2027")]
    first = ensure(engine, keys)
    assert set(first) == set(keys)
    codes = {info.code for info in first.values()}
    assert len(codes) == 3
    for code in codes:
        assert len(code) == coupons.CODE_LENGTH and set(code) <= set(coupons.ALPHABET)
    for info in first.values():
        assert info.expires_at == AS_OF + timedelta(days=7)
        assert info.discount_percent == 20.0

    # a retry a day later with other terms changes nothing already issued
    again = ensure(
        engine, [*keys, (3, "2026")], as_of=AS_OF + timedelta(days=1), discount_percent=30
    )
    assert {k: again[k] for k in keys} == first
    assert again[(3, "2026")].code not in codes
    assert again[(3, "2026")].expires_at == AS_OF + timedelta(days=8)
    assert stored(engine) == 4


def test_duplicate_keys_in_one_call_and_empty_calls(engine):
    issued = ensure(engine, [(5, "2026"), (5, "2026")])
    assert list(issued) == [(5, "2026")]
    assert ensure(engine, []) == {}
    assert stored(engine) == 1


def test_another_campaign_gets_its_own_code(engine):
    birthday = ensure(engine, [(1, "2026")])
    with engine.begin() as conn:
        winback = coupons.ensure_coupons(conn, "reengagement", [(1, "2026")], 15, 14, AS_OF)
    assert winback[(1, "2026")].code != birthday[(1, "2026")].code


def test_bulk_beyond_one_read_chunk(engine):
    keys = [(customer_id, "2026") for customer_id in range(1, 1_301)]
    first = ensure(engine, keys)
    assert len({info.code for info in first.values()}) == 1_300
    assert ensure(engine, keys) == first
    assert stored(engine) == 1_300


def test_concurrent_calls_never_issue_a_second_code(engine):
    keys = [(customer_id, "2026") for customer_id in range(1, 301)]
    barrier = threading.Barrier(2)
    results: list[dict] = []
    errors: list[BaseException] = []

    def worker(part: list[tuple[int, str]]) -> None:
        try:
            barrier.wait()
            results.append(ensure(engine, part))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    # overlapping halves, in opposite orders
    threads = [
        threading.Thread(target=worker, args=(keys[:200],)),
        threading.Thread(target=worker, args=(list(reversed(keys[100:])),)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    shared = keys[100:200]
    assert {k: results[0][k].code for k in shared} == {k: results[1][k].code for k in shared}
    assert stored(engine) == 300
    assert ensure(engine, keys) == {**results[0], **results[1]}


def test_bad_terms_are_refused_before_anything_is_written(engine):
    with pytest.raises(ValueError, match="coupon terms"):
        ensure(engine, [(1, "2026")], discount_percent=0)
    with pytest.raises(ValueError, match="coupon terms"):
        ensure(engine, [(1, "2026")], valid_days=0)
    assert stored(engine) == 0


def test_codes_are_not_predictable():
    codes = {coupons.new_code() for _ in range(20_000)}
    assert len(codes) == 20_000
