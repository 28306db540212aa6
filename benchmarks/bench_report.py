"""Report speed: `build_report` (lifecycle.reporting.report) over N customers, their orders, a
year of campaign sends (10 monthly runs of 5 campaigns, each to a tenth of the customers, 10%
holdout) and simulated events, on SQLite and PostgreSQL.

Target: 200,000 customers reported in under 10 seconds on each backend (the dashboard
builds it at most once a minute per view).

    python -m benchmarks.bench_report                     # 200,000 customers
    python -m benchmarks.bench_report --customers 20000   # smoke run (or BENCH_REPORT_CUSTOMERS)
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import sqlalchemy as sa

from benchmarks.scratch import postgres_warehouse, sqlite_warehouse
from lifecycle.core.config import load_settings
from lifecycle.devtools import seed, simulate
from lifecycle.reporting.report import build_report
from lifecycle.store import schema, warehouse

TARGET_SECONDS = 10
AS_OF = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
CAMPAIGNS = ("onboarding", "reengagement", "birthday", "feedback", "loyalty")


def fill(engine: sa.Engine, customers: int) -> int:
    """Seed, then runs and ledger rows; returns the ledger rows written."""
    seed.seed(engine, customers, seed=3, as_of=AS_OF)
    warehouse.upgrade(engine)
    rng = np.random.default_rng(3)
    runs, rows = [], 0
    with engine.begin() as conn:
        for month in range(10):
            for campaign in CAMPAIGNS:
                run_id = len(runs) + 1
                started = AS_OF - timedelta(days=30 * (10 - month))
                runs.append(
                    {
                        "id": run_id,
                        "campaign_id": campaign,
                        "run_key": f"bench_{run_id}",
                        "as_of": started,
                        "status": "success",
                        "started_at": started,
                    }
                )
                audience = rng.choice(customers, size=customers // 10, replace=False) + 1
                holdout = rng.random(len(audience)) < 0.1
                conn.execute(
                    sa.insert(schema.send_ledger),
                    [
                        {
                            "run_id": run_id,
                            "campaign_id": campaign,
                            "occurrence_key": f"m{month}",
                            "customer_id": int(customer),
                            "status": "skipped" if held else "sent",
                            "reason": "holdout" if held else None,
                            "template": campaign,
                            "planned_at": started,
                            "sent_at": None if held else started,
                        }
                        for customer, held in zip(audience, holdout, strict=True)
                    ],
                )
                rows += len(audience)
        conn.execute(sa.insert(schema.campaign_runs), runs)
    simulate.simulate_events(engine, as_of=AS_OF, seed=3)
    return rows


def bench_backend(url: str, customers: int) -> tuple[float, int]:
    engine = warehouse.make_engine(url)
    try:
        warehouse.upgrade(engine)
        rows = fill(engine, customers)
        started = time.perf_counter()
        build_report(engine, load_settings(), as_of=AS_OF)
        return time.perf_counter() - started, rows
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--customers", type=int, default=int(os.environ.get("BENCH_REPORT_CUSTOMERS", 200_000))
    )
    args = parser.parse_args()
    print(f"build_report, {args.customers:,} customers, target < {TARGET_SECONDS} s")
    print(f"{'backend':<12}{'ledger rows':>12}{'seconds':>10}  verdict")
    for name, make in (("sqlite", sqlite_warehouse), ("postgresql", postgres_warehouse)):
        with make() as url:
            seconds, rows = bench_backend(url, args.customers)
        verdict = "ok" if seconds < TARGET_SECONDS else "SLOWER than target"
        print(f"{name:<12}{rows:>12,}{seconds:>10.2f}  {verdict}", flush=True)


if __name__ == "__main__":
    main()
