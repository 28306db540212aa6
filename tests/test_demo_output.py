"""What `make demo` and the long commands print: the demo's table within 100 columns, when
waiting emails would go out, and no progress drawing when output is not a terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lifecycle.core.campaigns import load_campaigns
from lifecycle.core.config import load_settings
from lifecycle.devtools import demo

SPECS = load_campaigns(load_settings().campaigns_dir).specs
SKIPPED = {
    "frequency_cap": 3,
    "holdout": 143,
    "invalid_email": 7,
    "missing_email": 5,
    "no_consent": 479,
    "expired": 12,
    "suppressed": 1_234,
}


def test_the_demo_table_fits_100_columns(capsys: pytest.CaptureFixture[str]) -> None:
    outcomes = [
        demo.CampaignOutcome(
            campaign_id,
            {"planned": 12_588, "sent": 11_696, "waiting": 892, "skipped": SKIPPED},
            11_696,
            3.0,
        )
        for campaign_id in SPECS
    ]
    demo.OUT.print(demo.table(outcomes))
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 100
    text = "\n".join(lines)
    assert all(campaign_id in text for campaign_id in SPECS)
    assert "suppressed" in text and "1,234" in text and "11,696" in text


def test_waiting_emails_say_when_the_next_run_sends_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    opens = datetime(2026, 12, 3, 17, 0, tzinfo=UTC)
    waiting = [demo.Waiting("birthday", 14, opens), demo.Waiting("feedback", 29, opens)]
    demo.tell_waiting(waiting, SPECS, now=datetime(2026, 12, 3, 13, 30, tzinfo=UTC))
    out = " ".join(capsys.readouterr().out.split())
    assert "43 emails are still waiting" in out
    assert "the earliest opening: 2026-12-03 17:00 UTC" in out
    assert "birthday 14, next run 2026-12-03 17:05 UTC" in out  # cron "5 * * * *"
    assert "feedback 29, next run after the 2026-12-03 18:00 UTC features snapshot" in out


def test_no_progress_drawing_without_a_terminal(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")}
    url = f"sqlite:///{tmp_path / 'wh.db'}"
    lifecycle = [sys.executable, "-m", "lifecycle.cli", "--warehouse", url]
    for command in (["db", "upgrade"], ["seed", "--customers", "50"], ["features"]):
        done = subprocess.run(
            [*lifecycle, *command],
            env=env | {"LIFECYCLE_HOME": str(tmp_path)},
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""  # no spinner, no escape codes
        assert "\x1b" not in done.stdout
