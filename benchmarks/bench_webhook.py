"""Event webhook throughput: signed 768 KB batches POSTed to uvicorn on loopback.

SendGrid posts a batch every 30 s or per 768 KB from each of its servers, so a big send
arrives as bursts of concurrent, full-size posts. This starts `uvicorn lifecycle.web.public:app`
in its own process on a fresh warehouse, posts `--posts` distinct signed batches with
`--concurrency` connections, then replays them all (duplicates must store nothing), and prints
posts/s, events/s and latency.

    python -m benchmarks.bench_webhook                   # 40 posts of 768 KB, SQLite
    python -m benchmarks.bench_webhook --posts 4         # smoke run
    python -m benchmarks.bench_webhook --warehouse postgresql+psycopg://postgres@127.0.0.1/db
(`BENCH_WEBHOOK_POSTS` sets the default for --posts.) A PostgreSQL URL must name an empty,
migrated database: `lifecycle --warehouse URL db upgrade`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select

from lifecycle.feedback import events
from lifecycle.store import warehouse
from lifecycle.store.schema import engagement_events

KINDS = ("processed", "delivered", "open", "click", "bounce", "unsubscribe")


def make_event(post: int, n: int) -> dict[str, object]:
    """A realistically sized event (~450 bytes) with our custom_args."""
    kind = KINDS[n % len(KINDS)]
    event: dict[str, object] = {
        "email": f"customer{post * 10_000 + n}@example.com",
        "timestamp": 1_790_000_000 + n,
        "smtp-id": f"<{post:06d}{n:06d}Xk3aQ@ismtpd0001p1lon1.sendgrid.net>",
        "event": kind,
        "category": ["lifecycle", "birthday"],
        "sg_event_id": base64.urlsafe_b64encode(f"{kind}-{post}-{n}-bench".encode()).decode(),
        "sg_message_id": f"{post:011d}{n:011d}.filterdrecv-5bd7c7d6c-8xk2p-1-66F0A1B2-3.0",
        "send_id": str(post * 10_000 + n),
        "campaign": "birthday",
        "ip": "192.0.2.10",
        "useragent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36",
    }
    if kind == "click":
        event["url"] = "https://shop.example/offers/birthday?utm_source=lifecycle"
    if kind == "bounce":
        event.update(type="bounce", status="5.1.1", reason="550 5.1.1 user unknown")
    return event


def make_body(post: int, size: int) -> tuple[bytes, int]:
    """One batch of distinct events just under `size` bytes."""
    parts, total, n = [], 2, 0
    while True:
        text = json.dumps(make_event(post, n), separators=(",", ":"))
        if total + len(text) + 1 > size:
            break
        parts.append(text)
        total += len(text) + 1
        n += 1
    return ("[" + ",".join(parts) + "]").encode(), n


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(url: str, public_key: str, port: int, home: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LIFECYCLE_WAREHOUSE_URL": url,
        "LIFECYCLE_SENDGRID_WEBHOOK_PUBLIC_KEY": public_key,
        "LIFECYCLE_HOME": str(home),
    }
    command = [sys.executable, "-m", "uvicorn", "lifecycle.web.public:app", "--port", str(port),
               "--host", "127.0.0.1", "--no-access-log", "--log-level", "warning"]  # fmt: skip
    server = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("uvicorn did not start within 60 s")


async def post_all(
    url: str, bodies: list[bytes], key: ec.EllipticCurvePrivateKey, concurrency: int
) -> tuple[float, list[float], list[dict[str, int]]]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []
    results: list[dict[str, int]] = []
    limits = httpx.Limits(max_connections=concurrency)

    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                stamp = str(int(time.time()))
                signature = key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
                headers = {
                    "Content-Type": "application/json",
                    events.SIGNATURE_HEADER: base64.b64encode(signature).decode(),
                    events.TIMESTAMP_HEADER: stamp,
                }
                started = time.perf_counter()
                response = await client.post(url, content=body, headers=headers)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
                results.append(response.json())

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, results


def report(label: str, elapsed: float, latencies: list[float], events_posted: int) -> None:
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    print(
        f"{label:<8} {len(latencies):>5} posts in {elapsed:6.2f} s: "
        f"{len(latencies) / elapsed:7.1f} posts/s, {events_posted / elapsed:9,.0f} events/s, "
        f"latency p50 {statistics.median(ordered) * 1000:6.0f} ms, p95 {p95 * 1000:6.0f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_posts = int(os.environ.get("BENCH_WEBHOOK_POSTS", "40"))
    parser.add_argument("--posts", type=int, default=default_posts)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch-kb", type=int, default=768)
    parser.add_argument("--warehouse", help="SQLAlchemy URL (default: a fresh temp SQLite)")
    args = parser.parse_args()

    key = ec.generate_private_key(ec.SECP256R1())
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    built = [make_body(post, args.batch_kb * 1024) for post in range(args.posts)]
    bodies = [body for body, _ in built]
    total_events = sum(n for _, n in built)

    with tempfile.TemporaryDirectory() as tmp:
        url = args.warehouse or f"sqlite:///{Path(tmp) / 'warehouse.db'}"
        engine = warehouse.make_engine(url)
        warehouse.upgrade(engine)
        port = free_port()
        server = start_server(url, base64.b64encode(public_der).decode(), port, Path(tmp))
        try:
            target = f"http://127.0.0.1:{port}/lifecycle/events/sendgrid"
            per_post = total_events / args.posts
            print(
                f"{args.posts} signed posts of ~{args.batch_kb} KB ({per_post:,.0f} events each),"
                f" concurrency {args.concurrency}, {engine.url.get_backend_name()}"
            )
            elapsed, latencies, results = asyncio.run(
                post_all(target, bodies, key, args.concurrency)
            )
            report("new", elapsed, latencies, total_events)
            stored = sum(r["stored"] for r in results)
            elapsed, latencies, replayed = asyncio.run(
                post_all(target, bodies, key, args.concurrency)
            )
            report("replay", elapsed, latencies, total_events)
        finally:
            server.terminate()
            server.wait(30)
        with engine.connect() as conn:
            rows = conn.execute(select(func.count()).select_from(engagement_events)).scalar_one()
        engine.dispose()
    duplicates_stored = sum(r["stored"] for r in replayed)
    print(f"stored {stored:,} of {total_events:,} events; replay stored {duplicates_stored}")
    ok = stored == rows == total_events and duplicates_stored == 0
    if not ok:
        print(f"MISMATCH: table holds {rows:,} rows", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
