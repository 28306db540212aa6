"""`make bench`: run every `benchmarks/bench_*.py` in turn, each in its own process.

Each benchmark prints its own figures; copy them into BENCHMARKS.md with the date. Run on a
quiet machine: the figures are wall-clock. `BENCH=name make bench` runs one.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path


def main() -> int:
    here = Path(__file__).parent
    only = os.environ.get("BENCH")
    scripts = sorted(here.glob("bench_*.py"))
    if only:
        scripts = [s for s in scripts if s.stem == f"bench_{only}"]
    cpus = os.cpu_count()
    print(
        f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {cpus} cores, "
        f"Python {platform.python_version()}"
    )
    failed = 0
    for script in scripts:
        print(f"\n## {script.stem}", flush=True)
        failed += subprocess.call([sys.executable, "-m", f"benchmarks.{script.stem}"]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
