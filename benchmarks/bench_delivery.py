"""Delivery throughput: plan → render → send → record against the sink, and a naive loop.

    python -m benchmarks.bench_delivery                      # 200,000 recipients, 100 ms latency
    python -m benchmarks.bench_delivery --recipients 5000    # smoke run (or BENCH_DELIVERY_N)
    python -m benchmarks.bench_delivery --memory 100000,1000000
    python -m benchmarks.bench_delivery --recipients-per-request 50,200,1000   # bulk vs 1
    python -m benchmarks.bench_delivery --partition-size 100000   # plan in 2 ranges at once

With `--recipients-per-request N[,M...]` the same seeded audience is delivered by one campaign
per size in one run: one request per email first, then N (M...) recipients per request (one
body, substitutions); the report gives each, its ratio to one per email, and the delivery
workers' CPU time per email. `--memory` takes one size.

The sink runs in its own process (`lifecycle sink --no-bodies`) with the given latency on every
request. Planning and delivery run like the campaign DAG's mapped tasks: the audience's
customer-id ranges of `--partition-size` (default: the setting, 250,000) are planned in
`--workers` processes at once (`plan_partition`), then the batches are delivered in as many
(`max_active_batches`). The naive loop is what most scripts do: render, then
`SendGridAPIClient.send` per customer, sequentially, against the same sink; it runs on a
sample (`--naive-sample`) and its time for all recipients is extrapolated from that sample.

`--memory` runs the pipeline (seeded in a separate process) at each size and reports the peak
RSS of the planning process and of a delivery worker.

The warehouse is a fresh PostgreSQL database by default (production-shaped); `--warehouse
sqlite` uses a temporary SQLite file, where the two workers' writes contend for SQLite's single
write lock (measured here: ~1,700-1,900/s delivery against ~2,400/s on PostgreSQL).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks.scratch import postgres_warehouse
from lifecycle.core import render
from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import Settings, load_settings
from lifecycle.core.segments import IdRange
from lifecycle.run import plan as planning
from lifecycle.run.compose import Composer
from lifecycle.run.deliver import deliver
from lifecycle.run.finalize import finalize
from lifecycle.run.plan import Batch
from lifecycle.run.test_sends import audience_sample
from lifecycle.store import warehouse

AS_OF = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
KEY = "SG.benchmark-key"
SPEC = {
    "id": "bench_delivery",
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
        "requires_consent": False,
        "send_window": None,
        "frequency_cap": {"max_emails": 10, "days": 7},  # room for one campaign per size
    },
    "delivery": {
        "rate_per_second": 20_000,
        "concurrency": 256,
        "batch_size": 5_000,
        "max_active_batches": 2,
        "categories": ["lifecycle", "bench"],
    },
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def start_sink(latency_ms: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [sys.executable, "-m", "lifecycle.cli", "sink", "--port", str(port)]
    command += ["--latency-ms", str(latency_ms), "--no-bodies", "--api-key", KEY]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            httpx.get(f"{url}/_sink/stats", timeout=1)
            return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the sink did not start")


def prepare(url: str, recipients: int) -> None:
    """Migrate and seed in a child process, so its memory is not counted below."""
    env = {**os.environ, "LIFECYCLE_WAREHOUSE_URL": url}
    for args in (
        ["db", "upgrade"],
        ["seed", "--customers", str(recipients), "--as-of", AS_OF.isoformat()],
    ):
        subprocess.run(
            [sys.executable, "-m", "lifecycle.cli", *args],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )


def spec_for(per_request: int) -> CampaignSpec:
    """The benchmark campaign; a bulk one has its own id, so it plans the audience again."""
    campaign = SPEC["id"] if per_request == 1 else f"{SPEC['id']}_{per_request}"
    delivery = {**SPEC["delivery"], "recipients_per_request": per_request}
    return CampaignSpec.model_validate({**SPEC, "id": campaign, "delivery": delivery})


def _deliver(
    settings: Settings, spec_json: str, run_id: int, batch: dict[str, int]
) -> tuple[dict[str, Any], float, float]:
    """Deliver one batch; its outcome, the worker's peak RSS and the CPU seconds it took."""
    engine = warehouse.engine_for(settings.warehouse_url)  # one pool per worker process
    spec = CampaignSpec.model_validate_json(spec_json)
    cpu = time.process_time()
    result = deliver(
        engine, spec, settings, run_id=run_id, batch=Batch.from_dict(batch), attempt="bench"
    )
    return result.to_dict(), peak_rss_mb(), time.process_time() - cpu


def _plan_range(
    settings: Settings, spec_json: str, prepared: dict[str, Any], bounds: tuple[int | None, ...]
) -> float:
    """Plan one customer-id range (a mapped `plan_partition` task); the process's peak RSS."""
    engine = warehouse.engine_for(settings.warehouse_url)
    spec = CampaignSpec.model_validate_json(spec_json)
    step = planning.Prepared.from_dict(prepared)
    planning.plan_partition(engine, spec, settings, step, IdRange(*bounds))
    return peak_rss_mb()


def run_pipeline(
    settings: Settings, workers: int, per_request: int = 1, partition_size: int | None = None
) -> dict[str, Any]:
    engine = warehouse.make_engine(settings.warehouse_url)
    spec = spec_for(per_request)
    spec_json = spec.model_dump_json()
    started = time.perf_counter()
    prepared = planning.prepare(
        engine, spec, settings, run_key="bench", as_of=AS_OF, partition_size=partition_size
    )
    with ProcessPoolExecutor(workers) as pool:  # planning's processes, then delivery's
        ranges = [(r.first, r.last) for r in prepared.ranges]
        jobs = [
            pool.submit(_plan_range, settings, spec_json, prepared.to_dict(), r) for r in ranges
        ]
        plan_rss = max(job.result() for job in jobs)
    planned = planning.gather(engine, spec, prepared)
    planned_at = time.perf_counter()
    worker_rss = worker_cpu = 0.0
    with ProcessPoolExecutor(workers) as pool:
        deliveries = [
            pool.submit(_deliver, settings, spec_json, planned.run_id, b.to_dict())
            for b in planned.batches
        ]
        for delivery in deliveries:
            _, rss, cpu = delivery.result()
            worker_rss, worker_cpu = max(worker_rss, rss), worker_cpu + cpu
    delivered_at = time.perf_counter()
    counts = finalize(engine, spec, run_id=planned.run_id).counts
    finished = time.perf_counter()
    return {
        "planned": planned.planned,
        "skipped": planned.skipped,
        "batches": len(planned.batches),
        "partitions": len(prepared.ranges),
        "counts": counts,
        "plan_s": planned_at - started,
        "deliver_s": delivered_at - planned_at,
        "total_s": finished - started,
        "plan_rss_mb": plan_rss,
        "worker_rss_mb": worker_rss,
        "worker_cpu_s": worker_cpu,
        "recipients_per_request": per_request,
    }


def naive_loop(settings: Settings, sample: int) -> float:
    """Seconds per email: render + SendGridAPIClient.send, one customer after the other."""
    from sendgrid import SendGridAPIClient
    from sendgrid.helpers.mail import Content, Mail

    spec = spec_for(1)
    engine = warehouse.make_engine(settings.warehouse_url)
    rows = audience_sample(engine, spec, settings, AS_OF, sample)
    composer = Composer(spec, settings, AS_OF)
    client = SendGridAPIClient(api_key=KEY, host=settings.sendgrid_host)
    started = time.perf_counter()
    for row in rows:
        message = composer.email(row, None).message
        mail = Mail(
            from_email=str(spec.sender.email), to_emails=message.to_email, subject=message.subject
        )
        mail.add_content(Content("text/plain", message.text))
        mail.add_content(Content("text/html", message.html))
        client.send(mail)
    return (time.perf_counter() - started) / len(rows)


@contextmanager
def scratch_warehouse(choice: str, home: str) -> Iterator[str]:
    """A fresh database: PostgreSQL (a new database on the test server) or a SQLite file."""
    if choice == "sqlite":
        yield f"sqlite:///{home}/warehouse.db"
        return
    if choice != "postgres":
        yield choice
        return
    with postgres_warehouse("lifecycle_bench_") as url:
        yield url


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as home, scratch_warehouse(args.warehouse, home) as url:
        prepare(url, args.recipients)
        sink, sink_url = start_sink(args.latency_ms)
        try:
            settings = load_settings(
                home=Path(home),
                warehouse_url=url,
                transport="sendgrid",
                sendgrid_api_key=KEY,
                sendgrid_host=sink_url,
                unsubscribe_secret="benchmark-secret",
            )
            render.get_renderer(settings)  # compile templates before the clock starts
            sizes = sorted({1, *args.recipients_per_request})
            if args.memory_run:  # one size only: the memory figures are per run
                sizes = args.recipients_per_request[-1:]
            runs = []
            for per_request in sizes:
                httpx.delete(f"{sink_url}/_sink/messages", timeout=30)  # stats start at zero
                load = os.getloadavg()[0]
                figures = run_pipeline(settings, args.workers, per_request, args.partition_size)
                figures["sink"] = httpx.get(f"{sink_url}/_sink/stats", timeout=30).json()
                figures["load_1min"] = (load, os.getloadavg()[0])
                runs.append(figures)
            figures = {**runs[-1], "runs": runs}
            if args.naive_sample:
                figures["naive_s_per_email"] = naive_loop(settings, args.naive_sample)
        finally:
            sink.terminate()
            sink.wait()
    return figures


def report(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    runs = figures["runs"]
    print(
        f"recipients: {args.recipients:,} customers, sink latency {args.latency_ms:.0f} ms, "
        f"{args.workers} delivery worker(s), {runs[0]['batches']} batches"
    )
    print(f"planned {runs[0]['planned']:,}, skipped {runs[0]['skipped']}")
    for f in runs:
        sent = f["counts"]["sent"]
        print(f"\n== {f['recipients_per_request']} recipient(s) per request ==")
        print(f"planned {f['planned']:,}, skipped {f['skipped']}")
        print(
            f"sent {sent:,}, failed {f['counts']['failed']:,}, "
            f"unknown {f['counts']['unknown']:,}; sink: {f['sink'].get('accepted', 0):,} "
            f"requests accepted, {f['sink'].get('messages', 0):,} emails "
            f"({f['sink'].get('distinct_send_ids', 0):,} distinct send ids)"
        )
        print(
            f"plan ({f['partitions']} partition(s)): {f['plan_s']:.1f} s   "
            f"deliver (render+send+record): {f['deliver_s']:.1f} s   total: {f['total_s']:.1f} s"
        )
        print(
            f"throughput end to end: {sent / f['total_s']:,.0f} emails/s "
            f"(deliver only: {sent / f['deliver_s']:,.0f} emails/s)"
        )
        print(
            f"delivery workers' CPU: {f['worker_cpu_s']:.1f} s, "
            f"{f['worker_cpu_s'] / max(sent, 1) * 1e6:,.0f} us per email"
        )
        print(
            f"peak RSS: planning process {f['plan_rss_mb']:.0f} MB, "
            f"delivery worker {f['worker_rss_mb']:.0f} MB; "
            f"load average (1 min) before/after: {f['load_1min'][0]:.1f}/{f['load_1min'][1]:.1f}"
        )
    one = runs[0]
    for bulk in runs[1:]:
        rate, deliver_rate, cpu = (
            [f["counts"]["sent"] / f["total_s"] for f in (one, bulk)],
            [f["counts"]["sent"] / f["deliver_s"] for f in (one, bulk)],
            [f["worker_cpu_s"] / max(f["counts"]["sent"], 1) for f in (one, bulk)],
        )
        print(
            f"\n{bulk['recipients_per_request']} per request vs 1: end to end "
            f"{rate[1] / rate[0]:.2f}x, deliver only {deliver_rate[1] / deliver_rate[0]:.2f}x, "
            f"worker CPU per email {cpu[1] / cpu[0]:.2f}x"
        )
    f = runs[0]
    if "naive_s_per_email" in figures:
        per = figures["naive_s_per_email"]
        hours = per * f["planned"] / 3600
        print(
            f"naive loop (sequential SendGridAPIClient.send, measured on {args.naive_sample} "
            f"emails, extrapolated): {1 / per:,.1f} emails/s, {hours:,.1f} h for {f['planned']:,} "
            f"(one request per email is {per * f['counts']['sent'] / f['total_s']:,.0f}x faster)"
        )


def memory(args: argparse.Namespace) -> None:
    rows = []
    for size in (int(s) for s in args.memory.split(",")):
        command = [
            sys.executable,
            "-m",
            "benchmarks.bench_delivery",
            "--recipients",
            str(size),
            "--latency-ms",
            str(args.latency_ms),
            "--workers",
            "1",
            "--naive-sample",
            "0",
            "--warehouse",
            args.warehouse,
            "--recipients-per-request",
            str(args.recipients_per_request[-1]),
            "--memory-run",
            "--json",
        ]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        figures = json.loads(out.strip().splitlines()[-1])
        rows.append((size, figures["plan_rss_mb"], figures["worker_rss_mb"], figures["total_s"]))
    for size, plan_mb, worker_mb, seconds in rows:
        print(
            f"{size:>10,} recipients: planning process {plan_mb:6.0f} MB, delivery worker "
            f"{worker_mb:6.0f} MB ({seconds:,.0f} s)"
        )
    (small, *_), (large, *_) = rows[0], rows[-1]
    for label, index in (("planning", 1), ("delivery", 2)):
        change = rows[-1][index] / rows[0][index] - 1
        print(f"{label} peak RSS {large:,} vs {small:,}: {change:+.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--recipients", type=int, default=int(os.environ.get("BENCH_DELIVERY_N", 200_000))
    )
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--partition-size",
        type=int,
        help="customers per planning range (default: LIFECYCLE_PARTITION_SIZE, 250,000)",
    )
    parser.add_argument("--naive-sample", type=int, default=50)
    parser.add_argument(
        "--warehouse",
        default="postgres",
        help="'postgres' (default: a new database on $LIFECYCLE_TEST_PG's server, dropped "
        "afterwards), 'sqlite' (a temporary file) or the URL of an empty database",
    )
    parser.add_argument("--memory", metavar="SIZES", help="e.g. 100000,1000000")
    parser.add_argument(
        "--recipients-per-request",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1],
        metavar="N[,M...]",
        help="deliver the audience per email, then with N (M...) per request, side by side",
    )
    parser.add_argument("--memory-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        memory(args)
        return
    figures = throughput(args)
    if args.json:
        print(json.dumps(figures, default=str))
    else:
        report(args, figures)


if __name__ == "__main__":
    main()
