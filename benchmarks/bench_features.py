"""Features and every built-in segment for N customers: wall time and peak memory.

    python -m benchmarks.bench_features [--customers N] [--warehouse URL]

Defaults: N from $BENCH_CUSTOMERS or 1,000,000; a fresh SQLite file in a temporary directory
(or $BENCH_WAREHOUSE_URL). The warehouse's demo customers and orders are REPLACED by a seeded
population (seeded in a child process, so its memory is not counted). Target (issue 3): under
60 s and 1 GB peak RSS for 1,000,000 customers, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from lifecycle.core import features, segments
from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import load_settings
from lifecycle.store import warehouse

AS_OF = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def spec_for(name: str) -> CampaignSpec:
    segment = segments.load_segment(name)
    fields = ["order_id", "order_amount", "order_currency", "order_placed_at"]
    return CampaignSpec(
        id=f"bench_{name}",
        description="benchmark",
        segment=name,
        template="bench",
        occurrence_key=segment.occurrence_key,
        template_fields=fields if segment.grain == "order" else [],
        sender={"email": "bench@example.com"},
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--customers", type=int, default=int(os.environ.get("BENCH_CUSTOMERS", 1_000_000))
    )
    parser.add_argument("--warehouse", default=os.environ.get("BENCH_WAREHOUSE_URL"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp:
        url = args.warehouse or f"sqlite:///{Path(tmp) / 'warehouse.db'}"
        return run(url, args.customers)


def run(url: str, customers: int) -> int:
    engine = warehouse.make_engine(url)
    warehouse.upgrade(engine)
    started = time.perf_counter()
    seed = ["seed", "--customers", str(customers), "--as-of", AS_OF.isoformat()]
    subprocess.run(
        [sys.executable, "-m", "lifecycle.cli", "--warehouse", url, *seed],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    print(f"warehouse: {engine.dialect.name}, {customers:,} customers")
    print(f"seed (not counted): {time.perf_counter() - started:.1f} s")
    settings = load_settings(warehouse_url=url)

    total = time.perf_counter()
    started = time.perf_counter()
    snapshot = features.materialize(engine, AS_OF, settings)
    print(
        f"features: {snapshot.row_count:,} rows in {time.perf_counter() - started:.1f} s "
        f"(warnings {snapshot.warnings})"
    )
    for name in segments.builtin_names():
        started = time.perf_counter()
        members = sum(
            len(chunk) for chunk in segments.audience(engine, spec_for(name), AS_OF, settings)
        )
        print(f"segment {name}: {members:,} members in {time.perf_counter() - started:.1f} s")
    elapsed = time.perf_counter() - total
    print(f"TOTAL features + all segments: {elapsed:.1f} s; peak RSS {peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
