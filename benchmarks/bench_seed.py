"""Seeding speed: N customers with their orders into a fresh warehouse, SQLite and PostgreSQL.

Target: 1,000,000 customers in under 2 minutes on each backend.

    python -m benchmarks.bench_seed                  # 1,000,000 customers
    python -m benchmarks.bench_seed --customers 20000   # smoke run (or BENCH_SEED_CUSTOMERS)

The "1M (linear)" column scales a smaller run up; fixed costs make it pessimistic for small N.

PostgreSQL: a throw-away database on the server of LIFECYCLE_TEST_PG
(default postgresql+psycopg://postgres@127.0.0.1:5432/test), dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime

from benchmarks.scratch import postgres_warehouse, sqlite_warehouse
from lifecycle.devtools import seed
from lifecycle.store import warehouse

TARGET_SECONDS = 120
AS_OF = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def bench_backend(url: str, customers: int) -> tuple[float, int]:
    """Seconds for `seed.seed` on a freshly migrated warehouse, and the orders written."""
    engine = warehouse.make_engine(url)
    try:
        warehouse.upgrade(engine)
        start = time.perf_counter()
        result = seed.seed(engine, customers, seed=42, as_of=AS_OF)
        return time.perf_counter() - start, result.orders
    finally:
        engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--customers",
        type=int,
        default=int(os.environ.get("BENCH_SEED_CUSTOMERS", 1_000_000)),
        help="population size (default $BENCH_SEED_CUSTOMERS or 1,000,000)",
    )
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], action="append")
    args = parser.parse_args()
    backends = {"sqlite": sqlite_warehouse, "postgresql": postgres_warehouse}
    chosen = args.backend or list(backends)

    start = time.perf_counter()
    seed.generate(args.customers, 42, AS_OF)
    generate_s = time.perf_counter() - start
    print(f"seed: {args.customers:,} customers, as of {AS_OF:%Y-%m-%d %H:%M} UTC")
    print(f"in-memory generation alone: {generate_s:.1f} s")
    print("| backend | customers | orders | seconds | customers/s | 1M (linear) | target < 120 s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for name in chosen:
        with backends[name]() as url:
            seconds, orders = bench_backend(url, args.customers)
        per_million = seconds * 1_000_000 / args.customers
        verdict = "met" if per_million < TARGET_SECONDS else "MISSED"
        print(
            f"| {name} | {args.customers:,} | {orders:,} | {seconds:.1f} | "
            f"{args.customers / seconds:,.0f} | {per_million:.0f} s | {verdict} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
