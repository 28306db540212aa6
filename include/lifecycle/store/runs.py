"""Campaign runs (`campaign_runs`) and the test sends recorded under them (`test_sends`).

A run is one (campaign, run key): a DAG run, or one `lifecycle run`. Its row holds the run's
status (`states.RunStatus`) and, once finished, its outcome counts. Retries of the same run key
reuse the same row, so a retried plan or delivery never starts a second run. Planning
transactions of all campaigns planning the same customers take turns (`lock_for_planning`), so
frequency caps hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Integer, Row, func, literal, select, update

from lifecycle.store.dialect import insert
from lifecycle.store.schema import campaign_runs
from lifecycle.store.schema import test_sends as tests
from lifecycle.store.states import RunStatus, TestSendStatus

R = campaign_runs


def ensure_run(
    conn: Connection, campaign_id: str, run_key: str, as_of: datetime, dry_run: bool, now: datetime
) -> int:
    """The run row for (campaign, run_key), created on first call; retries get the same id.

    A run key is either a dry run or a real one for good: a real run must never be counted as
    (or write its ledger rows under) a dry run's row, nor the other way round.
    """
    conn.execute(
        insert(conn, R)
        .values(
            campaign_id=campaign_id,
            run_key=run_key,
            as_of=as_of,
            dry_run=dry_run,
            status=RunStatus.RUNNING,
            started_at=now,
        )
        .on_conflict_do_nothing(index_elements=["campaign_id", "run_key"])
    )
    run = find_run(conn, campaign_id, run_key)
    assert run is not None  # inserted above, or there already
    if bool(run.dry_run) != dry_run:
        kind = "a dry run" if run.dry_run else "a real run"
        raise ValueError(f"run key {run_key!r} of {campaign_id} is already {kind}; use another")
    return int(run.id)


def find_run(conn: Connection, campaign_id: str, run_key: str) -> Row[Any] | None:
    return conn.execute(
        select(R).where(R.c.campaign_id == campaign_id, R.c.run_key == run_key)
    ).first()


def get_run(conn: Connection, run_id: int) -> Row[Any]:
    row = conn.execute(select(R).where(R.c.id == run_id)).first()
    if row is None:
        raise LookupError(f"campaign run {run_id} does not exist")
    return row


def stop_run(conn: Connection, run_id: int, reason: str) -> None:
    """SendGrid refused the key or sender: the run's other batches must not send at all."""
    conn.execute(
        update(R)
        .where(R.c.id == run_id)
        .values(status=RunStatus.STOPPED, counts={"stopped": reason})
    )


def resume_run(conn: Connection, run_id: int) -> None:
    """Planning again (the run cleared after fixing the key) lifts a stop."""
    conn.execute(
        update(R)
        .where(R.c.id == run_id, R.c.status == RunStatus.STOPPED)
        .values(status=RunStatus.RUNNING, counts=None)
    )


def finish_run(
    conn: Connection, run_id: int, counts: dict[str, Any], status: RunStatus, now: datetime
) -> None:
    conn.execute(
        update(R).where(R.c.id == run_id).values(counts=counts, status=status, finished_at=now)
    )


FREQUENCY_CAP_LOCK = 0x4C494645  # any fixed int4, the same in every process: the lock class
LOCK_SPAN_BITS = 14  # a lock bucket is 16,384 consecutive customer ids...
LOCK_SLOTS = 256  # ...folded onto this many locks, so a transaction takes at most this many


def lock_buckets(customer_ids: Iterable[int]) -> list[int]:
    """The frequency-cap locks covering `customer_ids`, in the order they are taken."""
    return sorted({(int(cid) >> LOCK_SPAN_BITS) % LOCK_SLOTS for cid in customer_ids})


def lock_for_planning(conn: Connection, run_id: int, customer_ids: Iterable[int]) -> None:
    """Serialize the planning transactions of every campaign that plan any of `customer_ids`,
    until this one commits.

    The frequency cap counts every campaign's rows, then inserts this campaign's: two campaigns
    planning a customer at once (they all run after each features snapshot) would both see them
    one below the cap and both mail them. PostgreSQL: a transaction-scoped advisory lock per
    bucket of customer ids, taken in bucket order (so two transactions never wait on each
    other in a cycle): the partitions of one plan, disjoint in customer ids, plan side by side,
    and two campaigns planning the same customers still take turns. SQLite: a write first,
    which takes the database's write lock for the whole transaction.
    """
    if conn.dialect.name == "postgresql":
        for bucket in lock_buckets(customer_ids):
            key = (literal(FREQUENCY_CAP_LOCK, Integer), literal(bucket, Integer))
            conn.execute(select(func.pg_advisory_xact_lock(*key)))
    else:
        conn.execute(update(R).where(R.c.id == run_id).values(status=R.c.status))


# --- test sends ---------------------------------------------------------------------------
def tested(conn: Connection, run_id: int) -> set[tuple[int, str]]:
    """(customer id, recipient) pairs of the run whose test email went out (or was validated)."""
    query = select(tests.c.customer_id, tests.c.recipient).where(
        tests.c.run_id == run_id,
        tests.c.status.in_((TestSendStatus.SENT, TestSendStatus.SANDBOX)),
    )
    return {(int(customer_id), str(recipient)) for customer_id, recipient in conn.execute(query)}


def record_test_sends(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Upsert `test_sends` rows on (run_id, customer_id, recipient): a retry overwrites.

    One statement per row: a customer may be sampled twice (two occurrence keys), and one
    multi-row upsert may not touch the same row twice on PostgreSQL.
    """
    statement = insert(conn, tests)
    upsert = statement.on_conflict_do_update(
        index_elements=["run_id", "customer_id", "recipient"],
        set_={
            name: statement.excluded[name] for name in ("status", "message_id", "error", "sent_at")
        },
    )
    for row in rows:
        conn.execute(upsert, row)


def experiment_of(conn: Connection, run_id: int) -> dict[str, Any] | None:
    """The winner decision recorded on the run, if any."""
    return conn.execute(select(R.c.experiment).where(R.c.id == run_id)).scalar_one_or_none()


def record_experiment(conn: Connection, run_id: int, decision: dict[str, Any]) -> dict[str, Any]:
    """Record the run's winner decision once; returns the one that stands (a retry gets the
    first, so every remaining email goes out with the same variant)."""
    conn.execute(
        update(R).where(R.c.id == run_id, R.c.experiment.is_(None)).values(experiment=decision)
    )
    recorded = experiment_of(conn, run_id)
    assert recorded is not None
    return recorded
