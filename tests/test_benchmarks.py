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
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    planned = re.search(r"^planned (\d+)", result.stdout, re.M)
    outcome = re.search(
        r"^sent (\d+), failed 0, unknown 0; sink accepted (\d+) \((\d+) distinct send ids\)",
        result.stdout,
        re.M,
    )
    assert planned and outcome, result.stdout
    assert int(planned[1]) > 250
    assert int(planned[1]) == int(outcome[1]) == int(outcome[2]) == int(outcome[3])
    assert "naive loop" in result.stdout
