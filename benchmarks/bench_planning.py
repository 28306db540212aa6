"""Planning one campaign on PostgreSQL: in one partition vs in customer-id partitions at once.

    python -m benchmarks.bench_planning --customers 1000000 --partition-size 250000
    python -m benchmarks.bench_planning --customers 20000 --partition-size 5000   # smoke run

Seeds a throw-away PostgreSQL warehouse (`devtools.seed`, on the server of LIFECYCLE_TEST_PG),
plans a campaign whose audience is every customer (holdout, frequency cap, consent and the
one-email-per-inbox rule apply) once in a single partition, then (ledger emptied) in
partitions planned by `--workers` processes at once, as the campaign DAG's mapped
`plan_partition` tasks would be. Prints seconds and ledger rows/s for each and checks that both
plans wrote the same ledger (status, reason, variant per customer).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from benchmarks.scratch import postgres_warehouse
from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import load_settings
from lifecycle.core.segments import IdRange
from lifecycle.devtools import seed
from lifecycle.run import plan as planning
from lifecycle.store import warehouse
from lifecycle.store.schema import send_ledger

AS_OF = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
SPEC = {
    "id": "bench_planning",
    "status": "live",
    "description": "every customer, once",
    "segment": {
        "occurrence_key": "birthday_year",
        "rule": {"feature": "customer_id", "op": "ge", "value": 0},
    },
    "template": "onboarding/day0",
    "occurrence_key": "birthday_year",
    "sender": {"email": "hello@lifecycle-demo.shop", "name": "Lifecycle Demo Shop"},
    "policies": {
        "send_window": None,
        "frequency_cap": {"max_emails": 3, "days": 7},
        "holdout_percent": 5,
    },
    "variants": [
        {"id": "a", "weight": 50, "subject": "A {{ first_name }}"},
        {"id": "b", "weight": 50, "subject": "B {{ first_name }}"},
    ],
}


def _settings(url: str, home: str) -> Any:
    return load_settings(home=home, warehouse_url=url)


def _plan_range(url: str, home: str, prepared: dict[str, Any], bounds: list[int | None]) -> None:
    """One partition, in its own process (a mapped task on a worker)."""
    engine = warehouse.make_engine(url)
    try:
        spec = CampaignSpec.model_validate(SPEC)
        settings = _settings(url, home)
        step = planning.Prepared.from_dict(prepared)
        planning.plan_partition(engine, spec, settings, step, IdRange(*bounds))
    finally:
        engine.dispose()


def single(url: str, home: str) -> tuple[float, int]:
    engine = warehouse.make_engine(url)
    spec = CampaignSpec.model_validate(SPEC)
    start = time.perf_counter()
    planning.plan(
        engine, spec, _settings(url, home), run_key="single", as_of=AS_OF, partition_size=10**12
    )
    seconds = time.perf_counter() - start
    engine.dispose()
    return seconds, 1


def partitioned(url: str, home: str, size: int, workers: int) -> tuple[float, int]:
    engine = warehouse.make_engine(url)
    spec = CampaignSpec.model_validate(SPEC)
    settings = _settings(url, home)
    start = time.perf_counter()
    prepared = planning.prepare(
        engine, spec, settings, run_key="partitioned", as_of=AS_OF, partition_size=size
    )
    data = prepared.to_dict()
    with ProcessPoolExecutor(workers) as pool:
        futures = [
            pool.submit(_plan_range, url, home, data, [r.first, r.last]) for r in prepared.ranges
        ]
        for future in futures:
            future.result()
    planning.gather(engine, spec, prepared)
    seconds = time.perf_counter() - start
    engine.dispose()
    return seconds, len(prepared.ranges)


def ledger_digest(url: str) -> tuple[int, str]:
    """Rows and a digest of (customer, key, status, reason, variant) in customer order."""
    engine = warehouse.make_engine(url)
    L = send_ledger
    query = sa.select(
        L.c.customer_id, L.c.occurrence_key, L.c.status, L.c.reason, L.c.variant
    ).order_by(L.c.customer_id, L.c.occurrence_key)
    digest = hashlib.sha256()
    rows = 0
    with engine.connect() as conn:
        for row in conn.execution_options(stream_results=True, yield_per=50_000).execute(query):
            digest.update(repr(tuple(row)).encode())
            rows += 1
    engine.dispose()
    return rows, digest.hexdigest()


def reset(url: str) -> None:
    engine = warehouse.make_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE send_ledger, campaign_runs, coupons"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
    engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_planning", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--partition-size", type=int, default=250_000)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    with postgres_warehouse("bench_plan_") as url, tempfile.TemporaryDirectory() as home:
        engine = warehouse.make_engine(url)
        warehouse.upgrade(engine)
        started = time.perf_counter()
        seed.seed(engine, args.customers, seed=42, as_of=AS_OF)
        engine.dispose()
        print(f"seeded {args.customers:,} customers in {time.perf_counter() - started:.0f} s")
        reset(url)
        one_s, _ = single(url, home)
        one_rows, one_digest = ledger_digest(url)
        reset(url)
        many_s, ranges = partitioned(url, home, args.partition_size, args.workers)
        many_rows, many_digest = ledger_digest(url)
    print("| plan | partitions | processes | ledger rows | seconds | rows/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| single | 1 | 1 | {one_rows:,} | {one_s:.1f} | {one_rows / one_s:,.0f} |")
    print(
        f"| partitioned | {ranges} | {args.workers} | {many_rows:,} | {many_s:.1f} | "
        f"{many_rows / many_s:,.0f} |"
    )
    same = (one_rows, one_digest) == (many_rows, many_digest)
    print(f"speed-up {one_s / many_s:.2f}x; ledgers identical: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
