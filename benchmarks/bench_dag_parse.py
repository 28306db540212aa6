"""DAG parsing cost: how long the dag-processor takes to parse every file in `dags/`.

Each round runs in a fresh process (as the dag-processor does per file), with Airflow itself
already imported (the processor has it loaded) and the clock around `DagBag(dag_folder=dags/)`:
the lifecycle imports, reading and validating every YAML spec, building every DAG. `--specs N`
parses N campaign specs (the shipped ones, copied under new ids) to show how it scales.

    python -m benchmarks.bench_dag_parse               # shipped specs + 100 specs, 5 rounds
    python -m benchmarks.bench_dag_parse --specs 10 --rounds 2   # smoke run
(`BENCH_DAG_PARSE_SPECS` sets the default for --specs.) Target: all DAG files < 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from lifecycle.core.config import PROJECT_ROOT, load_settings

PARSE = """
import json, time
from airflow.dag_processing.dagbag import DagBag
started = time.perf_counter()
bag = DagBag(dag_folder={dags!r})
elapsed = time.perf_counter() - started
result = {{"seconds": elapsed, "dags": len(bag.dag_ids), "errors": len(bag.import_errors)}}
print(json.dumps(result))
"""


def parse_once(campaigns_dir: Path, airflow_home: Path) -> dict[str, float]:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "LIFECYCLE_CAMPAIGNS_DIR": str(campaigns_dir),
    }
    code = PARSE.format(dags=str(PROJECT_ROOT / "dags"))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def copies(target: Path, count: int) -> None:
    """`count` specs: the shipped ones cycled under new ids."""
    shipped = sorted(load_settings().campaigns_dir.glob("*.yaml"))
    for n in range(count):
        spec = yaml.safe_load(shipped[n % len(shipped)].read_text())
        spec["id"] = f"{spec['id']}_{n}"
        (target / f"{spec['id']}.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True))


def measure(label: str, campaigns_dir: Path, rounds: int, airflow_home: Path) -> None:
    results = [parse_once(campaigns_dir, airflow_home) for _ in range(rounds)]
    seconds = [r["seconds"] for r in results]
    print(
        f"{label:<28} {results[0]['dags']:>5} DAGs  {results[0]['errors']} import errors  "
        f"median {statistics.median(seconds):.3f} s  max {max(seconds):.3f} s  "
        f"({rounds} fresh processes)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--specs", type=int, default=int(os.environ.get("BENCH_DAG_PARSE_SPECS", 100))
    )
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-dag-parse-"))
    try:
        measure("shipped specs", load_settings().campaigns_dir, args.rounds, work / "airflow")
        many = work / "campaigns"
        many.mkdir()
        copies(many, args.specs)
        measure(f"{args.specs} specs", many, args.rounds, work / "airflow")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
