"""The delivery benchmark still runs end to end (a small size; figures live in BENCHMARKS.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_delivery_benchmark_runs_and_every_planned_email_reaches_the_sink_once() -> None:
    """Per email and 50 recipients per request, side by side on the same audience, each planned
    in three customer-id ranges at once."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_delivery",
            "--recipients",
            "300",
            "--naive-sample",
            "3",
            "--warehouse",
            "sqlite",
            "--recipients-per-request",
            "50",
            "--partition-size",
            "100",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    planned = re.search(r"^planned (\d+)", result.stdout, re.M)
    outcomes = re.findall(
        r"^sent (\d+), failed 0, unknown 0; sink: (\d+) requests accepted, (\d+) emails "
        r"\((\d+) distinct send ids\)",
        result.stdout,
        re.M,
    )
    assert planned and len(outcomes) == 2, result.stdout
    assert int(planned[1]) > 250
    (sent, requests, accepted, distinct), (bulk_sent, bulk_requests, *bulk_received) = outcomes
    assert int(planned[1]) == int(sent) == int(requests) == int(accepted) == int(distinct)
    assert [int(bulk_sent)] * 2 == [int(n) for n in bulk_received] and bulk_sent == sent
    assert int(bulk_requests) < int(requests) / 5
    assert "50 per request vs 1: end to end" in result.stdout
    partitions = re.findall(r"^plan \((\d+) partition\(s\)\)", result.stdout, re.M)
    assert [int(n) for n in partitions] == [3, 3], result.stdout  # 300 customers, ranges of 100
    assert "naive loop" in result.stdout


@pytest.mark.timeout(1500)
def test_scale_benchmark_runs_celery_and_local_side_by_side() -> None:
    """Two setups at a small size: every recipient reaches the sink once per setup."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_scale",
            "--recipients",
            "1200",
            "--batch-size",
            "400",
            "--setups",
            "celery x2,local",
            "--planning-customers",
            "3000",
            "--partition-size",
            "1000",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=1400,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = re.findall(r"^(celery x2|local)\s+(\d+)\s+(\d+)\s+(\d+)$", result.stdout, re.M)
    assert [name for name, *_ in rows] == ["celery x2", "local"], result.stdout
    assert [int(emails) for _, emails, *_ in rows] == [1200, 1200]
    assert all(int(wall) > 0 and int(deliver) >= int(wall) for *_, wall, deliver in rows)
    hosts = re.search(
        r"^celery x2: success, 1200 emails, 3 deliver tasks on (.+?):", result.stdout, re.M
    )
    assert hosts, result.stdout
    assert "load before:" in result.stdout and "load after:" in result.stdout
    plans = re.findall(
        r"^\| (single|partitioned) \| (\d+) \| \d+ \| ([\d,]+) \|", result.stdout, re.M
    )
    assert [(name, int(parts)) for name, parts, _ in plans] == [("single", 1), ("partitioned", 3)]
    assert "ledgers identical: yes" in result.stdout


@pytest.mark.postgres
def test_planning_benchmark_plans_alike_in_one_partition_and_in_several() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_planning",
            "--customers",
            "6000",
            "--partition-size",
            "2000",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = re.findall(
        r"^\| (single|partitioned) \| (\d+) \| \d+ \| ([\d,]+) \|", result.stdout, re.M
    )
    assert [(name, int(parts)) for name, parts, _ in rows] == [("single", 1), ("partitioned", 3)]
    assert rows[0][2] == rows[1][2] and int(rows[0][2].replace(",", "")) > 5000
    assert "ledgers identical: yes" in result.stdout
