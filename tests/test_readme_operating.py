"""README, "Operating campaigns safely": every snippet of its Approval, Throttling and Alerts
subsections is run or validated here (the REST call is the one tests/test_approval_airflow.py
makes against a real Airflow)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import timedelta

import yaml
from airflow.sdk import Connection
from test_approval_airflow import hitl_path

from lifecycle.airflow.notifier import webhook_url
from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import PROJECT_ROOT, SENDGRID_POOL, load_settings

README = (PROJECT_ROOT / "README.md").read_text()
SECTION = README.split("## Operating campaigns safely\n", 1)[1].split("\n## ", 1)[0]
BASE = yaml.safe_load((PROJECT_ROOT / "include/campaigns/loyalty.yaml").read_text())


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", SECTION, flags=re.S)


def test_both_approval_forms_validate_as_written() -> None:
    (block,) = blocks("yaml")
    short, rest = block.split("# or,")
    long = rest.split("\n", 1)[1]  # after the rest of the comment line
    specs = [
        CampaignSpec.model_validate({**BASE, **yaml.safe_load(text)}) for text in (short, long)
    ]
    assert all(spec.needs_approval for spec in specs)
    assert specs[0].approval is not None and specs[0].approval.expires_after == timedelta(hours=24)
    assert specs[1].approval is not None and specs[1].approval.approvers == [
        "ops-lead",
        "crm-manager",
    ]
    assert specs[1].approval.expires_after == timedelta(hours=6)
    deadline = re.search(r"`(deadline_hours: \d+)`", SECTION)
    assert deadline is not None
    spec = CampaignSpec.model_validate({**BASE, **yaml.safe_load(deadline.group(1))})
    assert spec.deadline_hours == 3


def test_the_rest_call_is_the_one_the_end_to_end_test_makes() -> None:
    path = re.search(r"`PATCH /api/v2(/dags/\S+/hitlDetails)`", SECTION)
    assert path is not None
    written = path.group(1).replace("campaign_<id>", "campaign_x").replace("<run_id>", "r1")
    assert written == hitl_path("campaign_x", "r1")
    assert '`{"chosen_options": ["Approve"]}`' in SECTION


def test_the_pool_variables_are_the_settings_the_code_reads() -> None:
    names = re.findall(r"^\| `(LIFECYCLE_SENDGRID_\w+)` \|", SECTION, flags=re.M)
    assert names == ["LIFECYCLE_SENDGRID_POOL_SLOTS", "LIFECYCLE_SENDGRID_RATE_PER_SECOND"]
    env = {**os.environ, names[0]: "5", names[1]: "250"}
    script = "import json; from lifecycle.core.config import load_settings as s; c = s(); "
    script += "print(json.dumps([c.sendgrid_pool_slots, c.account_share()]))"
    out = subprocess.run(
        [".venv/bin/python", "-c", script],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == [5, 50.0]
    assert f"pool, `{SENDGRID_POOL}`" in SECTION
    assert load_settings().sendgrid_pool_slots == 4 and "| `4` |" in SECTION


def test_the_alert_connections_as_exported_are_read_by_the_notifier() -> None:
    (block,) = blocks("bash")
    out = subprocess.run(
        ["bash", "-euc", block + "\nenv -0"], capture_output=True, text=True, check=True
    )
    env = dict(line.split("=", 1) for line in out.stdout.split("\0") if "=" in line)
    smtp = Connection.from_json(env["AIRFLOW_CONN_LIFECYCLE_ALERTS_SMTP"], "lifecycle_alerts_smtp")
    hook = Connection.from_json(
        env["AIRFLOW_CONN_LIFECYCLE_ALERTS_WEBHOOK"], "lifecycle_alerts_webhook"
    )
    assert smtp.conn_type == "smtp" and smtp.port == 587
    assert smtp.extra_dejson["to"].split(", ") == ["crm-ops@example.com", "oncall@example.com"]
    assert webhook_url(hook) == "https://hooks.slack.com/services/T000/B000/XXXX"
