"""Planning in customer-id partitions decides exactly what one plan over the whole audience does:
the same ledger (status, reason, variant per customer), whatever the partitions' order or
concurrency, with inboxes shared across partitions, the frequency cap, the holdout,
suppressions and experiments; the partitions' ranges drop and repeat nobody."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, insert, select, text
from test_pipeline import AS_OF, add_customers, make_spec

from lifecycle.core import segments
from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import Settings, load_settings
from lifecycle.run import plan as planning
from lifecycle.store import runs, warehouse
from lifecycle.store.schema import send_ledger, suppressions

pytestmark = pytest.mark.postgres
COMPARED = ["customer_id", "occurrence_key", "status", "reason", "variant", "template"]
CUSTOMERS = 700
PARTITION = 90  # about 8 partitions


@pytest.fixture
def pg_urls(pg_url: str) -> Iterator[tuple[str, str]]:
    """Two fresh warehouses: one planned in one partition, the other in many (the second a
    copy of `pg_url`'s freshly migrated database, on the same server)."""
    first = sa.make_url(pg_url)
    name = f"{first.database}_b"
    admin = sa.create_engine(first.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{first.database}"'))
    yield pg_url, first.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def spec_with(**changes: Any) -> CampaignSpec:
    return make_spec(
        policies={"frequency_cap": {"max_emails": 1, "days": 7}, "holdout_percent": 10},
        variants=[
            {"id": "a", "weight": 30, "template": "onboarding/{occurrence_key}"},
            {"id": "b", "weight": 70, "subject": "B {{ first_name }}"},
        ],
        **changes,
    )


def build_world(engine: Engine, settings: Settings, spec: CampaignSpec, seed: int = 7) -> None:
    """Customers with gaps in their ids; inboxes shared by customers far apart in id (so in
    different partitions), one of them already mailed by an earlier run; suppressed, capped and
    unconsenting customers. The same world for the same seed."""
    rng = random.Random(seed)
    ids = sorted(rng.sample(range(1, 40 * CUSTOMERS), CUSTOMERS))
    for customer in ids:
        add_customers(engine, 1, start=customer)
    emails: dict[int, str] = {}
    for group in range(60):  # 2 or 3 customers per inbox, spelled differently
        members = rng.sample(ids, rng.choice([2, 3]))
        spellings = [
            f"Shared{group}@Example.am",
            f" shared{group}@example.am",
            f"SHARED{group}@example.AM ",
        ]
        for customer, spelling in zip(members, spellings, strict=False):
            emails[customer] = spelling
    with engine.begin() as conn:
        for customer, email in emails.items():
            conn.execute(
                sa.update(sa.table("customers", sa.column("id"), sa.column("email")))
                .where(sa.column("id") == customer)
                .values(email=email)
            )
        no_consent = rng.sample(ids, 25)
        conn.execute(
            sa.update(sa.table("customers", sa.column("id"), sa.column("marketing_consent")))
            .where(sa.column("id").in_(no_consent))
            .values(marketing_consent=False)
        )
        blocked = [f"customer{c}@example.am" for c in rng.sample(ids, 30)] + ["shared3@example.am"]
        conn.execute(
            insert(suppressions),
            [
                {
                    "email": email,
                    "scope": "global",
                    "reason": "unsubscribe",
                    "source": "manual",
                    "created_at": AS_OF - timedelta(days=3),
                }
                for email in blocked
            ],
        )
    first = next(segments.audience(engine, spec, AS_OF, settings))
    key = str(first["occurrence_key"].iloc[0])
    earlier = [
        sent_row("other", str(rng.random()), customer, f"customer{customer}@example.am")
        for customer in rng.sample(ids, 80)  # at the cap (1 in 7 days) through another campaign
    ]
    earlier.append(sent_row(spec.id, key, 10**9, " Shared5@example.am"))  # the inbox is taken
    with engine.begin() as conn:
        conn.execute(insert(send_ledger), earlier)


def sent_row(campaign: str, key: str, customer: int, email: str) -> dict[str, Any]:
    return {
        "campaign_id": campaign,
        "occurrence_key": key,
        "customer_id": customer,
        "run_id": 0,
        "status": "sent",
        "template": "other",
        "email": email,
        "inbox": email.strip().lower(),
        "planned_at": AS_OF - timedelta(days=1),
        "sent_at": AS_OF - timedelta(days=1),
    }


def ledger_of(engine: Engine, campaign: str) -> pd.DataFrame:
    with engine.connect() as conn:
        rows = conn.execute(
            select(send_ledger).where(
                send_ledger.c.campaign_id == campaign, send_ledger.c.customer_id < 10**9
            )
        ).mappings()
        frame = pd.DataFrame(rows)
    return frame[COMPARED].sort_values(["customer_id", "occurrence_key"]).reset_index(drop=True)


Planner = Callable[[Engine, CampaignSpec, Settings, str, dict[str, Any]], planning.PlanResult]


def single(
    engine: Engine, spec: CampaignSpec, settings: Settings, key: str, options: dict[str, Any]
) -> planning.PlanResult:
    return planning.plan(
        engine, spec, settings, run_key=key, as_of=AS_OF, partition_size=10**9, **options
    )


def in_threads(
    engine: Engine, spec: CampaignSpec, settings: Settings, key: str, options: dict[str, Any]
) -> planning.PlanResult:
    """The partitions at once, four threads (as mapped tasks on several workers)."""
    prepared = planning.prepare(
        engine, spec, settings, run_key=key, as_of=AS_OF, partition_size=PARTITION, **options
    )
    assert len(prepared.ranges) >= 6
    with ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda r: planning.plan_partition(engine, spec, settings, prepared, r),
                prepared.ranges,
            )
        )
    return planning.gather(engine, spec, prepared)


def backwards(
    engine: Engine, spec: CampaignSpec, settings: Settings, key: str, options: dict[str, Any]
) -> planning.PlanResult:
    """The partitions one by one, highest ids first: the lower id must still keep an inbox."""
    prepared = planning.prepare(
        engine, spec, settings, run_key=key, as_of=AS_OF, partition_size=PARTITION, **options
    )
    assert len(prepared.ranges) >= 6
    for id_range in reversed(prepared.ranges):
        planning.plan_partition(engine, spec, settings, prepared, id_range)
    return planning.gather(engine, spec, prepared)


def worlds(
    pg_urls: tuple[str, str], tmp_path: Path, spec: CampaignSpec
) -> list[tuple[Engine, Settings]]:
    built = []
    for url in pg_urls:
        engine = warehouse.make_engine(url)
        settings = load_settings(home=tmp_path, warehouse_url=url)
        build_world(engine, settings, spec)
        built.append((engine, settings))
    return built


@pytest.mark.parametrize("partitioned", [in_threads, backwards], ids=["threads", "backwards"])
def test_a_partitioned_plan_writes_the_ledger_one_plan_writes(
    pg_urls: tuple[str, str], tmp_path: Path, partitioned: Planner
) -> None:
    spec = spec_with()
    (whole, settings), (parts, parts_settings) = worlds(pg_urls, tmp_path, spec)
    expected = single(whole, spec, settings, "r1", {})
    got = partitioned(parts, spec, parts_settings, "r1", {})
    want, have = ledger_of(whole, spec.id), ledger_of(parts, spec.id)
    # every rule had something to decide, across partitions too
    reasons = set(want["reason"].dropna())
    assert {"duplicate_address", "frequency_cap", "holdout", "suppressed", "no_consent"} <= reasons
    assert set(want["variant"].dropna()) == {"a", "b"}
    pd.testing.assert_frame_equal(have, want)
    assert (got.planned, got.skipped) == (expected.planned, expected.skipped)
    assert sum(b.size for b in got.batches) == sum(b.size for b in expected.batches)
    sent = have[have["status"] == "planned"]
    assert len(sent) == sent["customer_id"].nunique() == got.planned
    for engine, _ in ((whole, None), (parts, None)):
        engine.dispose()


def test_an_experiment_plans_its_test_slice_and_the_rest_alike_in_partitions(
    pg_urls: tuple[str, str], tmp_path: Path
) -> None:
    spec = spec_with(
        experiment={
            "test_percent": 40,
            "wait_hours": 2,
            "metric": "unique_opens",
            "significance": 0.05,
            "fallback": "a",
        }
    )
    (whole, settings), (parts, parts_settings) = worlds(pg_urls, tmp_path, spec)
    for planner, engine, where in ((single, whole, settings), (in_threads, parts, parts_settings)):
        planner(engine, spec, where, "r1", {"phase": "test"})
        planner(engine, spec, where, "r1", {"phase": "rest", "winner": "b"})
    want, have = ledger_of(whole, spec.id), ledger_of(parts, spec.id)
    assert "duplicate_address" in set(want["reason"].dropna())
    pd.testing.assert_frame_equal(have, want)
    for engine in (whole, parts):
        engine.dispose()


def test_the_ranges_cover_every_member_once_and_every_id_in_between(
    pg_url: str, tmp_path: Path
) -> None:
    spec = spec_with()
    engine = warehouse.make_engine(pg_url)
    settings = load_settings(home=tmp_path, warehouse_url=pg_url)
    build_world(engine, settings, spec)
    members = pd.concat(segments.audience(engine, spec, AS_OF, settings))["customer_id"]
    ranges = segments.id_ranges(engine, spec, AS_OF, settings, PARTITION)
    assert len(ranges) == -(-len(members) // PARTITION)
    assert ranges[0].first is None and ranges[-1].last is None
    for before, after in pairwise(ranges):
        assert before.last is not None and after.first == before.last + 1
    per_range = [
        pd.concat(segments.audience(engine, spec, AS_OF, settings, customer_ids=r))["customer_id"]
        for r in ranges
    ]
    assert sorted(pd.concat(per_range)) == sorted(members)  # nobody dropped, nobody twice
    assert all(len(part) <= PARTITION for part in per_range)
    engine.dispose()


def test_a_customer_who_joins_between_the_ranges_and_their_planning_is_planned_once(
    pg_url: str, tmp_path: Path
) -> None:
    spec = make_spec(policies={"frequency_cap": None})
    engine = warehouse.make_engine(pg_url)
    settings = load_settings(home=tmp_path, warehouse_url=pg_url)
    add_customers(engine, 10, start=100)
    add_customers(engine, 10, start=300)
    prepared = planning.prepare(engine, spec, settings, run_key="r", as_of=AS_OF, partition_size=10)
    assert len(prepared.ranges) == 2
    add_customers(engine, 1, start=200)  # between the ranges' members
    add_customers(engine, 1, start=1)  # below the lowest
    add_customers(engine, 1, start=10_000)  # above the highest
    for id_range in prepared.ranges:
        planning.plan_partition(engine, spec, settings, prepared, id_range)
    result = planning.gather(engine, spec, prepared)
    planned = ledger_of(engine, spec.id)["customer_id"].tolist()
    assert sorted(planned) == [1, *range(100, 110), 200, *range(300, 310), 10_000]
    assert result.planned == len(planned)
    engine.dispose()


def advisory_waiters(engine: Engine) -> int:
    waiting = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
    with engine.connect() as conn:
        return int(conn.execute(waiting).scalar_one())


def test_partitions_plan_side_by_side_and_the_same_customers_take_turns(
    pg_url: str, tmp_path: Path
) -> None:
    spec = make_spec()
    engine = warehouse.make_engine(pg_url)
    settings = load_settings(home=tmp_path, warehouse_url=pg_url)
    low = add_customers(engine, 20, start=1)
    high = add_customers(engine, 20, start=1 << 20)  # another frequency-cap lock
    assert runs.lock_buckets(low) != runs.lock_buckets(high)
    prepared = planning.prepare(engine, spec, settings, run_key="r", as_of=AS_OF, partition_size=20)
    low_range, high_range = prepared.ranges
    with engine.connect() as other_campaign, other_campaign.begin():
        runs.lock_for_planning(other_campaign, run_id=0, customer_ids=low)  # planning `low`
        beside = threading.Thread(
            target=planning.plan_partition, args=(engine, spec, settings, prepared, high_range)
        )
        beside.start()
        beside.join(timeout=60)
        assert not beside.is_alive(), "the high partition waited for the low one's lock"
        done = threading.Event()
        thread = threading.Thread(
            target=lambda: (
                planning.plan_partition(engine, spec, settings, prepared, low_range),
                done.set(),
            )
        )
        thread.start()
        deadline = time.monotonic() + 60
        while not advisory_waiters(engine):
            assert time.monotonic() < deadline, "the low partition never waited for the lock"
            time.sleep(0.05)
        assert not done.is_set()
    thread.join(timeout=60)
    assert done.is_set()
    assert planning.gather(engine, spec, prepared).planned == 40
    engine.dispose()
