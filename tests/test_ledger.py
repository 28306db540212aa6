"""The send ledger's SQL on SQLite and PostgreSQL: idempotent planning, exclusive claims."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, select, text

from lifecycle.store import ledger, runs, unknown, warehouse
from lifecycle.store.ledger import Outcome
from lifecycle.store.schema import send_ledger
from lifecycle.store.states import LedgerStatus

AS_OF = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def row(customer_id: int, run_id: int, **changes: Any) -> dict[str, Any]:
    values = {
        "campaign_id": "welcome",
        "occurrence_key": "day0",
        "customer_id": customer_id,
        "run_id": run_id,
        "status": "planned",
        "template": "onboarding/day0",
        "email": f"c{customer_id}@example.am",
        "timezone": "Asia/Yerevan",
        "context": {"first_name": "Ani"},
        "planned_at": AS_OF,
        "send_after": AS_OF,
        "expires_at": AS_OF + timedelta(days=2),
        "sent_at": None,
        "reason": None,
        "retryable": None,
        "attempts": 0,
    }
    return {**values, **changes}


def statuses(engine: Engine) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(send_ledger.c.customer_id, send_ledger.c.status)).all())


def planned_run(engine: Engine, count: int, **changes: Any) -> int:
    with engine.begin() as conn:
        run_id = runs.ensure_run(conn, "welcome", "r1", AS_OF, False, AS_OF)
        ledger.insert_rows(conn, [row(i, run_id, **changes) for i in range(1, count + 1)])
    return run_id


def test_runs_are_upserted_on_campaign_and_run_key(engine: Engine) -> None:
    with engine.begin() as conn:
        first = runs.ensure_run(conn, "welcome", "dag-run-1", AS_OF, False, AS_OF)
        again = runs.ensure_run(conn, "welcome", "dag-run-1", AS_OF, False, AS_OF)
        other = runs.ensure_run(conn, "welcome", "dag-run-2", AS_OF, False, AS_OF)
        other_campaign = runs.ensure_run(conn, "birthday", "dag-run-1", AS_OF, False, AS_OF)
    assert first == again
    assert len({first, other, other_campaign}) == 3


def test_a_run_key_stays_dry_or_real(engine: Engine) -> None:
    with engine.begin() as conn:
        runs.ensure_run(conn, "welcome", "rehearsal", AS_OF, True, AS_OF)
        runs.ensure_run(conn, "welcome", "real", AS_OF, False, AS_OF)
        with pytest.raises(ValueError, match="'rehearsal' of welcome is already a dry run"):
            runs.ensure_run(conn, "welcome", "rehearsal", AS_OF, False, AS_OF)
        with pytest.raises(ValueError, match="'real' of welcome is already a real run"):
            runs.ensure_run(conn, "welcome", "real", AS_OF, True, AS_OF)


def test_insert_is_idempotent_and_never_overwrites(engine: Engine) -> None:
    run_id = planned_run(engine, 3)
    with engine.begin() as conn:
        conn.execute(
            send_ledger.update().where(send_ledger.c.customer_id == 1).values(status="sent")
        )
        ledger.insert_rows(conn, [row(i, run_id) for i in range(1, 5)])
    assert statuses(engine) == {1: "sent", 2: "planned", 3: "planned", 4: "planned"}


def test_bulk_insert_keeps_order_values_and_existing_rows(engine: Engine) -> None:
    """On PostgreSQL the rows go through COPY and a staging table (`store.staging`); on both
    warehouses ids follow the order given, values come back as written (enum states as their
    value, naive times as UTC, JSON, NULLs) and an existing row is left alone."""
    order = [7, 3, 9, 1, 8, 2]
    with engine.begin() as conn:
        run_id = runs.ensure_run(conn, "welcome", "r1", AS_OF, False, AS_OF)
        ledger.insert_rows(conn, [row(3, run_id, context={"first_name": "old"})])
        rows = [
            row(
                customer,
                run_id,
                status=LedgerStatus.PLANNED,
                context={"first_name": f"Ани {customer}", "tier": ["gold", None]},
                send_after=AS_OF.replace(tzinfo=None) + timedelta(hours=customer),
                expires_at=None,
            )
            for customer in order
        ]
        ledger.insert_rows(conn, rows)
        stored = conn.execute(select(send_ledger).order_by(send_ledger.c.id)).mappings().all()
    assert [r["customer_id"] for r in stored] == [3, 7, 9, 1, 8, 2]
    assert stored[0]["context"] == {"first_name": "old"}  # left alone
    for record in stored[1:]:
        customer = record["customer_id"]
        assert record["status"] == "planned" and record["expires_at"] is None
        assert record["context"] == {"first_name": f"Ани {customer}", "tier": ["gold", None]}
        assert record["send_after"] == AS_OF + timedelta(hours=customer)


def test_claims_are_exclusive_and_respect_the_batch_and_send_after(engine: Engine) -> None:
    run_id = planned_run(engine, 10)
    with engine.begin() as conn:
        ledger.insert_rows(conn, [row(99, run_id, send_after=AS_OF + timedelta(hours=1))])
        ids = sorted(conn.execute(select(send_ledger.c.id)).scalars())
    first, last = ids[0], ids[-1]
    with engine.begin() as conn:
        a = ledger.claim(conn, run_id, first, ids[7], AS_OF, "a", AS_OF, 5)
    with engine.begin() as conn:
        b = ledger.claim(conn, run_id, first, last, AS_OF, "b", AS_OF, 100)
    with engine.begin() as conn:
        c = ledger.claim(conn, run_id, first, last, AS_OF, "c", AS_OF, 100)
    a_ids, b_ids = {r.id for r in a}, {r.id for r in b}
    assert len(a_ids) == 5 and a_ids.isdisjoint(b_ids) and c == []
    assert a_ids | b_ids == set(ids[:10])  # the row not due yet was not claimed
    assert a[0].context == {"first_name": "Ani"}


@pytest.mark.postgres
def test_a_claim_waiting_on_a_rivals_row_locks_takes_none_of_its_rows(pg_url: str) -> None:
    """Two attempts claim the same rows at once: the second UPDATE waits on the first's row
    locks, then re-checks `status = 'planned'` and skips every row the first committed."""
    engine = warehouse.make_engine(pg_url)
    run_id = planned_run(engine, 10)
    with engine.connect() as conn:
        ids = sorted(conn.execute(select(send_ledger.c.id)).scalars())
    claimed: dict[str, list[int]] = {}

    def claim(attempt: str, conn: Connection) -> None:
        rows = ledger.claim(conn, run_id, ids[0], ids[-1], AS_OF, attempt, AS_OF, 100)
        claimed[attempt] = [r.id for r in rows]

    with engine.connect() as first:
        first_tx = first.begin()
        claim("first", first)  # holds the row locks until it commits
        with engine.begin() as second_conn:
            pid = second_conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            second = threading.Thread(target=claim, args=("second", second_conn))
            second.start()
            waiting = text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE pid = :pid AND wait_event_type = 'Lock'"
            )
            deadline = time.monotonic() + 30
            with engine.connect() as observer:
                while not observer.execute(waiting, {"pid": pid}).scalar_one():
                    assert second.is_alive() and time.monotonic() < deadline
                    time.sleep(0.01)
            first_tx.commit()
            second.join(30)
    assert sorted(claimed["first"]) == ids and claimed["second"] == []
    with engine.connect() as conn:
        claimers = conn.execute(select(send_ledger.c.claimed_by).distinct()).scalars().all()
    engine.dispose()
    assert claimers == ["first"]


def test_outcomes_only_touch_rows_the_attempt_claimed(engine: Engine) -> None:
    run_id = planned_run(engine, 4)
    with engine.begin() as conn:
        mine = ledger.claim(conn, run_id, 0, 10**9, AS_OF, "mine", AS_OF, 2)
        theirs = ledger.claim(conn, run_id, 0, 10**9, AS_OF, "theirs", AS_OF, 2)
        outcomes = [Outcome(r.id, "sent", f"m{r.id}", 202) for r in [*mine, *theirs]]
        ledger.record(conn, outcomes, "mine", AS_OF)
        rows = {r.id: r for r in conn.execute(select(send_ledger))}
    assert {rows[r.id].status for r in mine} == {"sent"}
    assert {rows[r.id].message_id for r in mine} == {f"m{r.id}" for r in mine}
    assert {rows[r.id].status for r in theirs} == {"sending"}


def test_interrupted_rows_become_unknown_and_are_never_claimed_again(engine: Engine) -> None:
    run_id = planned_run(engine, 6)
    with engine.begin() as conn:
        dead = ledger.claim(conn, run_id, 0, 10**9, AS_OF, "try1", AS_OF, 3)
    with engine.begin() as conn:
        assert ledger.mark_interrupted(conn, run_id, 0, 10**9, "try2") == 3
        assert ledger.mark_interrupted(conn, run_id, 0, 10**9, "try2") == 0
        fresh = ledger.claim(conn, run_id, 0, 10**9, AS_OF, "try2", AS_OF, 100)
    assert {r.id for r in fresh}.isdisjoint(r.id for r in dead) and len(fresh) == 3
    with engine.begin() as conn:
        # a late answer of the first attempt still lands: it knows what happened
        ledger.record(conn, [Outcome(dead[0].id, "sent", "late", 202)], "try1", AS_OF)
        counts = ledger.run_counts(conn, run_id, AS_OF)
    assert counts["unknown"] == 2 and counts["sent"] == 1 and counts["sending"] == 3


def test_release_gives_rows_back(engine: Engine) -> None:
    run_id = planned_run(engine, 3)
    with engine.begin() as conn:
        claimed = ledger.claim(conn, run_id, 0, 10**9, AS_OF, "a", AS_OF, 3)
        ledger.release(conn, [r.id for r in claimed], "a")
        rows = conn.execute(select(send_ledger.c.status, send_ledger.c.attempts)).all()
    assert set(rows) == {("planned", 0)}


def test_batch_bounds_split_due_rows(engine: Engine) -> None:
    run_id = planned_run(engine, 23)
    with engine.begin() as conn:
        ledger.insert_rows(conn, [row(500, run_id, send_after=AS_OF + timedelta(hours=3))])
        bounds = ledger.batch_bounds(conn, run_id, AS_OF, 10)
        due = sorted(
            conn.execute(
                select(send_ledger.c.id).where(send_ledger.c.send_after <= AS_OF)
            ).scalars()
        )
    assert [n for _, _, n in bounds] == [10, 10, 3]
    assert bounds[0][0] == due[0] and bounds[-1][1] == due[-1]
    assert all(a[1] < b[0] for a, b in itertools.pairwise(bounds))


def test_retryable_failures_are_planned_again_within_limits(engine: Engine) -> None:
    run_id = planned_run(engine, 0)
    rows = [
        row(1, run_id, status="failed", retryable=True, attempts=1),
        row(2, run_id, status="failed", retryable=False, attempts=1),
        row(3, run_id, status="failed", retryable=True, attempts=3),
        row(4, run_id, status="failed", retryable=True, attempts=1, expires_at=AS_OF),
    ]
    with engine.begin() as conn:
        ledger.insert_rows(conn, rows)
        assert ledger.requeue_retryable(conn, "welcome", AS_OF, max_attempts=3) == 1
        assert ledger.expire_overdue(conn, "welcome", AS_OF) == 0  # failed rows stay failed
    assert statuses(engine) == {1: "planned", 2: "failed", 3: "failed", 4: "failed"}


def test_overdue_planned_rows_expire(engine: Engine) -> None:
    planned_run(engine, 2, expires_at=AS_OF - timedelta(minutes=1))
    with engine.begin() as conn:
        assert ledger.expire_overdue(conn, "welcome", AS_OF) == 2
        reasons = set(conn.execute(select(send_ledger.c.reason)).scalars())
    assert reasons == {"expired"}


def test_taken_counts_cover_all_campaigns_in_the_window(engine: Engine) -> None:
    run_id = planned_run(engine, 0)
    old = AS_OF - timedelta(days=10)
    rows = [
        row(1, run_id, status="sent", sent_at=AS_OF - timedelta(days=1)),
        row(1, run_id, campaign_id="birthday", status="planned"),
        row(1, run_id, campaign_id="lapsed", status="sent", sent_at=old, planned_at=old),
        row(1, run_id, campaign_id="loyalty", status="skipped", reason="holdout"),
        row(2, run_id, status="failed", retryable=False),
        row(3, run_id, status="unknown"),
    ]
    with engine.begin() as conn:
        ledger.insert_rows(conn, rows)
        counts = ledger.taken_counts(conn, [1, 2, 3, 4], AS_OF - timedelta(days=7))
    assert counts == {1: 2, 3: 1}


@pytest.mark.parametrize("only_some", [False, True])
def test_requeue_unknown(engine: Engine, only_some: bool) -> None:
    run_id = planned_run(engine, 0)
    with engine.begin() as conn:
        ledger.insert_rows(conn, [row(i, run_id, status="unknown") for i in (1, 2, 3)])
        ids = sorted(conn.execute(select(send_ledger.c.id)).scalars())
        chosen = ids[:1] if only_some else ids
        assert unknown.requeue(conn, "welcome", chosen) == (1 if only_some else 3)
    expected = (
        {1: "planned", 2: "unknown", 3: "unknown"}
        if only_some
        else dict.fromkeys((1, 2, 3), "planned")
    )
    assert statuses(engine) == expected


def test_rows_a_rival_marked_unknown_go_back_when_their_owner_never_sent_them(
    engine: Engine,
) -> None:
    run_id = planned_run(engine, 2)
    with engine.begin() as conn:
        claimed = ledger.claim(conn, run_id, 0, 10**9, AS_OF, "a", AS_OF, 2)
        assert ledger.mark_interrupted(conn, run_id, 0, 10**9, "b") == 2  # duplicate dispatch
        ledger.release(conn, [claimed[0].id], "a")  # "a" knows this one never left
    assert sorted(statuses(engine).values()) == ["planned", "unknown"]


@pytest.mark.postgres
def test_postgres_plans_every_statement_for_its_own_values(pg_url: str) -> None:
    """psycopg would prepare a statement on the server from its 5th run, and PostgreSQL would
    then plan `inbox = ANY(:values)` once for any array: minutes per chunk on big audiences."""
    engine = warehouse.make_engine(pg_url)
    try:
        with engine.connect() as conn:
            for n in range(10):
                ledger.inbox_holders(conn, "welcome", [f"a{i}@x.am" for i in range(n + 1)])
            prepared = conn.execute(text("SELECT count(*) FROM pg_prepared_statements")).scalar()
    finally:
        engine.dispose()
    assert prepared == 0
