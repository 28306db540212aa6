"""Scaling out: the same campaign on 1 and 2 Celery workers and on the LocalExecutor, side by side.

    python -m benchmarks.bench_scale                       # 20,000 recipients, sink at 100 ms
    python -m benchmarks.bench_scale --recipients 2000     # smoke run

One PostgreSQL warehouse is seeded once; each setup runs a campaign of its own (same spec, its
own id, so nobody is planned twice) triggered through the REST API, against one sink process
(`lifecycle sink --no-bodies`) that answers every request after `--latency-ms`. Celery setups
come from `lifecycle.devtools.cluster` (`--concurrency` task slots per worker), the
LocalExecutor from `lifecycle.devtools.standalone` with `parallelism` equal to two workers'
slots. Reported per setup: emails/s end to end (trigger to finished run) and deliver-only
(first deliver task start to last deliver task end, from the task instances). Then planning
`--planning-customers` (1,000,000) in one partition vs in `--partition-size` ranges on two
processes (`benchmarks.bench_planning`); `--planning-customers 0` skips it.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks import bench_planning
from benchmarks.bench_delivery import AS_OF, KEY, start_sink
from lifecycle.devtools import deployment
from lifecycle.devtools.cluster import create_database, drop_database, start_cluster
from lifecycle.devtools.standalone import start_standalone

SETUPS = ("celery x1", "celery x2", "local")


def spec(campaign_id: str, args: argparse.Namespace) -> dict[str, Any]:
    return deployment.scale_spec(
        campaign_id,
        batch_size=args.batch_size,
        max_active_batches=args.slots,
        concurrency=args.delivery_concurrency,
        rate_per_second=100_000,
    )


def campaign_id(setup: str) -> str:
    return "scale_" + setup.replace(" ", "_").replace("x", "")


def run_campaign(api: httpx.Client, dag_id: str, recipients: int, deadline: float) -> dict:
    """Trigger `dag_id` for at most `recipients`; wall time and deliver-only time."""
    while api.get(f"/dags/{dag_id}").status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{dag_id} never appeared")
        time.sleep(2)
    api.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
    conf = {"as_of": AS_OF.isoformat(), "limit": recipients}
    started = time.monotonic()
    run = api.post(f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
    run_id = run.raise_for_status().json()["dag_run_id"]
    while (state := api.get(f"/dags/{dag_id}/dagRuns/{run_id}").json()["state"]) not in (
        "success",
        "failed",
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{dag_id} run {run_id} still {state}")
        time.sleep(1)
    wall = time.monotonic() - started
    path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
    tis = api.get(path, params={"limit": 1000}).raise_for_status().json()["task_instances"]
    delivers = [t for t in tis if t["task_id"] == "deliver"]
    first = min(datetime.fromisoformat(t["start_date"]) for t in delivers)
    last = max(datetime.fromisoformat(t["end_date"]) for t in delivers)
    hosts = sorted({t["hostname"] for t in delivers})
    return {
        "state": state,
        "wall_s": wall,
        "deliver_s": (last - first).total_seconds(),
        "tasks": len(delivers),
        "hosts": hosts,
    }


def sink_messages(sink_url: str) -> int:
    return int(httpx.get(f"{sink_url}/_sink/stats", timeout=30).json()["messages"])


def measure(
    setup: str, args: argparse.Namespace, warehouse_url: str, sink_url: str, folder: Path
) -> dict[str, Any]:
    name = campaign_id(setup)
    campaigns = folder / name / "campaigns"
    campaigns.mkdir(parents=True)
    (campaigns / f"{name}.yaml").write_text(yaml.safe_dump(spec(name, args)))
    env = {
        "LIFECYCLE_CAMPAIGNS_DIR": str(campaigns),
        "LIFECYCLE_SENDGRID_POOL_SLOTS": str(args.slots),
        **deployment.lifecycle_env(
            warehouse_url, sink_url, KEY, home=folder / name / "home", secret="bench-secret"
        ),
    }
    home, port = folder / name / "airflow", deployment.free_port()
    stop: Callable[[], None]
    if setup == "local":
        env["AIRFLOW__CORE__PARALLELISM"] = str(2 * args.concurrency)
        airflow = start_standalone(home, port, env)
        stop, client = airflow.stop, airflow.api.client
        try:
            airflow.wait_healthy(timeout=600)
        except BaseException:
            stop()
            raise
    else:
        workers = int(setup.split("x")[1])
        cluster = start_cluster(home, port, workers, env, worker_concurrency=args.concurrency)
        stop, client = cluster.stop, cluster.api.client
        try:
            cluster.wait_healthy(timeout=600)
        except BaseException:
            stop()
            raise
    try:
        before = sink_messages(sink_url)
        with client(timeout=120) as api:
            result = run_campaign(api, f"campaign_{name}", args.recipients, time.monotonic() + 3600)
        result["emails"] = sink_messages(sink_url) - before
    finally:
        stop()
    return result


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_scale",
        description="The same campaign on 1 and 2 Celery workers and on the LocalExecutor, "
        "against the local sink; emails/s end to end and deliver-only, side by side.",
    )
    parser.add_argument("--recipients", type=int, default=20_000, help="default 20,000")
    parser.add_argument("--latency-ms", type=float, default=100, help="sink latency (100)")
    parser.add_argument("--batch-size", type=int, default=1_000, help="rows per deliver task")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="task slots per Celery worker (4)"
    )
    parser.add_argument(
        "--slots", type=int, default=8, help="SendGrid pool slots = max_active_batches (8)"
    )
    parser.add_argument(
        "--delivery-concurrency", type=int, default=16, help="requests in flight per task (16)"
    )
    parser.add_argument("--setups", default=",".join(SETUPS), help=f"of {', '.join(SETUPS)}")
    parser.add_argument(
        "--planning-customers",
        type=int,
        default=1_000_000,
        help="customers planned in one partition vs partitioned (1,000,000; 0 skips it)",
    )
    parser.add_argument(
        "--partition-size", type=int, default=250_000, help="customers per partition (250,000)"
    )
    args = parser.parse_args(argv)
    setups = [s.strip() for s in args.setups.split(",")]
    if unknown := set(setups) - set(SETUPS):
        parser.error(f"unknown setups {sorted(unknown)}")
    print(f"load before: {load()}", flush=True)
    customers = math.ceil(args.recipients / 0.85)  # invalid or shared addresses are skipped
    warehouse_url = create_database("bench_scale_")
    sink, sink_url = start_sink(args.latency_ms)
    results: dict[str, dict[str, Any]] = {}
    try:
        deployment.prepare_warehouse(warehouse_url, customers, AS_OF)
        with tempfile.TemporaryDirectory(prefix="bench_scale_") as folder:
            for setup in setups:
                print(f"{setup}: starting...", flush=True)
                results[setup] = measure(setup, args, warehouse_url, sink_url, Path(folder))
                r = results[setup]
                print(
                    f"{setup}: {r['state']}, {r['emails']} emails, {r['tasks']} deliver tasks on "
                    f"{', '.join(r['hosts'])}: {r['wall_s']:.1f} s end to end, "
                    f"{r['deliver_s']:.1f} s delivering",
                    flush=True,
                )
    finally:
        sink.terminate()
        sink.wait()
        drop_database(warehouse_url)
    print(f"load after: {load()}")
    print(
        f"\n{args.recipients:,} recipients, sink at {args.latency_ms:g} ms, batches of "
        f"{args.batch_size:,}, {args.slots} pool slots, {args.delivery_concurrency} requests in "
        f"flight per task, {args.concurrency} slots per Celery worker\n"
    )
    print(f"{'setup':<10} {'emails':>7} {'end to end /s':>14} {'deliver-only /s':>16}")
    for setup, r in results.items():
        print(
            f"{setup:<10} {r['emails']:>7} {r['emails'] / r['wall_s']:>14.0f} "
            f"{r['emails'] / r['deliver_s']:>16.0f}"
        )
    delivered = all(r["state"] == "success" for r in results.values())
    if not args.planning_customers:
        return 0 if delivered else 1
    print(f"\nplanning {args.planning_customers:,} customers, load before: {load()}", flush=True)
    planned = bench_planning.main(
        ["--customers", str(args.planning_customers), "--partition-size", str(args.partition_size)]
    )
    print(f"load after: {load()}")
    return 0 if delivered and planned == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
