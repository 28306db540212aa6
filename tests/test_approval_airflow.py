"""Approval end to end in a real `airflow standalone`: three campaigns that need approval wait
between plan and deliver; one is approved, one rejected, one left to time out, all answered
through the REST API, as the Airflow UI's "Required actions" page does. The one left waiting
also misses its deadline: both its alerts reach a local SMTP server and a chat webhook.

Answers go in as soon as each task waits: the race in which Airflow 3.3.2's scheduler failed a
task resumed that fast (lifecycle.airflow.scheduler_fix) is met here whenever the scheduler has
not yet read the parked worker's exit; the standalone log says when the fix dropped a report.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import psutil
import pytest
import sqlalchemy as sa
import yaml
from alert_receivers import alert_receivers
from processes import still_running
from test_e2e_airflow import AS_OF, family, free_port

from lifecycle.core import features
from lifecycle.core.config import DEFAULT_POOL_SLOTS, PROJECT_ROOT, SENDGRID_POOL, load_settings
from lifecycle.devtools import seed
from lifecycle.devtools.sink.thread import run_sink_in_thread
from lifecycle.devtools.standalone import Standalone, start_standalone
from lifecycle.store import schema, warehouse

# One budget for the whole test (Airflow's start included: 7 minutes on a 2-core machine loaded
# by other work, 14 minutes for the whole test there), below pytest's timeout so a slow run fails
# here, saying where it waited and why, rather than being killed silently mid-wait.
BUDGET_S = 1080
pytestmark = [pytest.mark.slow, pytest.mark.timeout(BUDGET_S + 120)]

API_KEY = "SG.approval-key"
ANSWERS = {"approved": "Approve", "rejected": "Reject", "expired": None}
FIX_LOADED = "lifecycle: scheduler ignores stale executor successes"
FIX_USED = "lifecycle: ignored the executor's success report"
NOTABLE = re.compile(r"\[error|reported that the task instance|Marking task as|lifecycle: ")


class Budget:
    """The time left for the test; when it runs out, fail with what it was waiting for, the state
    of every task instance of the runs, and the log lines that tell why."""

    def __init__(self, airflow: Standalone, deadline: float) -> None:
        self.airflow, self.deadline = airflow, deadline
        self.api: httpx.Client | None = None
        self.runs: dict[str, str] = {}

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def check(self, waiting_for: str) -> None:
        if not self.remaining():
            raise AssertionError(f"{BUDGET_S} s budget spent waiting for {waiting_for}\n{self}")

    def __str__(self) -> str:
        lines = [f"task instances: {self.task_states()}", "notable log lines:"]
        log = self.airflow.log_path.read_text(errors="replace") if self.airflow.log_path else ""
        lines += [line[:300] for line in log.splitlines() if NOTABLE.search(line)][-25:]
        return "\n".join([*lines, "log tail:", self.airflow.log_tail(30)])

    def task_states(self) -> dict[str, str]:
        states = {}
        for name, run_id in self.runs.items():
            try:
                assert self.api is not None
                path = f"/dags/campaign_{name}/dagRuns/{run_id}/taskInstances"
                tis = self.api.get(path, timeout=30).json()["task_instances"]
                states[name] = ", ".join(
                    f"{ti['task_id']}{'' if ti['map_index'] < 0 else ti['map_index']}="
                    f"{ti['state']}#{ti['try_number']}"
                    for ti in sorted(tis, key=lambda ti: ti["task_id"])
                )
            except (httpx.HTTPError, AssertionError, KeyError, ValueError) as exc:
                states[name] = f"unknown ({exc!r})"
        return states


def write_specs(directory: Path) -> None:
    """Three copies of the loyalty campaign that need approval (the last one expires in 36 s)."""
    directory.mkdir()
    base = yaml.safe_load((PROJECT_ROOT / "include/campaigns/loyalty.yaml").read_text())
    for name in ANSWERS:
        hours = 0.01 if name == "expired" else 1
        spec = {
            **base,
            "id": name,
            "approval": {"approvers": ["admin"], "expires_after_hours": hours},
        }
        if name == "expired":
            spec["deadline_hours"] = 0.005  # 18 s after it was queued: it is still waiting then
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(spec))


def hitl_path(dag_id: str, run_id: str) -> str:
    return f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails"


def wait_for(api: httpx.Client, path: str, budget: Budget, seen: set) -> dict:
    while (response := api.get(path)).status_code != 200:
        budget.check(f"{path} (last answer {response.status_code})")
        seen |= family(budget.airflow.process.pid)
        time.sleep(2)
    return response.json()


def wait_awaiting_input(
    api: httpx.Client, dag_id: str, run_id: str, budget: Budget, seen: set
) -> None:
    """The UI offers the answer once the task waits (its request exists a moment before)."""
    path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/approve"
    while (state := api.get(path).json().get("state")) != "awaiting_input":
        budget.check(f"{dag_id}'s approve task to wait for an answer (it is {state})")
        seen |= family(budget.airflow.process.pid)
        time.sleep(1)


def respond(api: httpx.Client, path: str, answer: str) -> None:
    """Answer as the UI does. Airflow's SQLite metadata DB, busy with the scheduler and the
    triggerer, may answer 500 (database locked): the write was rolled back, so ask again; a 409
    then means an earlier try did land."""
    for attempt in range(5):
        response = api.patch(path, json={"chosen_options": [answer]})
        if response.status_code == 200 or (attempt and response.status_code == 409):
            return
        assert response.status_code == 500, response.text
        time.sleep(2)
    raise AssertionError(f"no answer recorded: {response.text}")


def wait_for_state(api: httpx.Client, dag_id: str, run_id: str, budget: Budget, seen: set) -> str:
    while True:
        state = api.get(f"/dags/{dag_id}/dagRuns/{run_id}").raise_for_status().json()["state"]
        if state in ("success", "failed"):
            return str(state)
        budget.check(f"{dag_id}'s run to finish (it is {state})")
        seen |= family(budget.airflow.process.pid)
        time.sleep(2)


def campaign_runs(engine: sa.Engine) -> dict[str, tuple[str, dict]]:
    runs = schema.campaign_runs
    with engine.connect() as conn:
        rows = conn.execute(sa.select(runs.c.campaign_id, runs.c.status, runs.c.counts))
        return {campaign: (status, counts) for campaign, status, counts in rows}


def ledger_statuses(engine: sa.Engine) -> dict[tuple[str, str], int]:
    ledger = schema.send_ledger
    query = sa.select(ledger.c.campaign_id, ledger.c.status, sa.func.count()).group_by(
        ledger.c.campaign_id, ledger.c.status
    )
    with engine.connect() as conn:
        return {(c, s): n for c, s, n in conn.execute(query)}


def test_approve_reject_and_time_out_through_the_rest_api(tmp_path: Path, sqlite_url: str) -> None:
    deadline = time.monotonic() + BUDGET_S
    engine = warehouse.make_engine(sqlite_url)
    seed.seed(engine, 400, seed=11, as_of=AS_OF)
    features.materialize(engine, AS_OF, load_settings(warehouse_url=sqlite_url))
    write_specs(tmp_path / "campaigns")
    seen: set[psutil.Process] = set()
    with run_sink_in_thread(api_keys=[API_KEY]) as sink, alert_receivers() as (alerts, conns):
        airflow = start_standalone(
            tmp_path / "airflow",
            free_port(),
            env={
                "LIFECYCLE_HOME": str(tmp_path / "home"),
                "LIFECYCLE_CAMPAIGNS_DIR": str(tmp_path / "campaigns"),
                "LIFECYCLE_UNSUBSCRIBE_SECRET": "approval-secret",
                "AIRFLOW_CONN_LIFECYCLE_WAREHOUSE": sqlite_url,
                "AIRFLOW_CONN_SENDGRID_DEFAULT": json.dumps(
                    {"conn_type": "sendgrid", "password": API_KEY, "host": sink.url}
                ),
                **conns,
            },
        )
        budget = Budget(airflow, deadline)
        try:
            airflow.wait_healthy(timeout=budget.remaining())
            api = budget.api = httpx.Client(
                base_url=f"{airflow.url}/api/v2",
                headers={"Authorization": f"Bearer {airflow.api_token()}"},
                timeout=120,  # a loaded 2-core machine stalls the single api-server worker
            )
            runs = budget.runs
            for name in ANSWERS:
                dag_id = f"campaign_{name}"
                wait_for(api, f"/dags/{dag_id}", budget, seen)
                api.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
                conf = {"as_of": AS_OF.isoformat()}
                run = api.post(f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
                runs[name] = run.raise_for_status().json()["dag_run_id"]

            for name, answer in ANSWERS.items():
                detail = wait_for(api, hitl_path(f"campaign_{name}", runs[name]), budget, seen)
                body = detail["body"]
                assert "Audience" in body and "Holdout" in body and "waiting" in body
                assert "Coupons to be issued: none" in body
                assert detail["assigned_users"] == [{"id": "admin", "name": "admin"}]
                # Nothing of this campaign leaves before its answer (one answered earlier may
                # be delivering by now).
                sent = [m for m in sink.state.snapshot() if m["custom_args"]["campaign"] == name]
                assert sent == [], f"{name} sent before its answer"
                if answer is not None:  # once the task waits, as a person would see it
                    wait_awaiting_input(api, f"campaign_{name}", runs[name], budget, seen)
                    respond(api, hitl_path(f"campaign_{name}", runs[name]), answer)

            # The approver's link: the run's first emails, rendered, behind Airflow's login.
            preview = body.split("](")[1].split(")")[0]
            page = httpx.get(preview, headers=api.headers, timeout=30)
            assert page.status_code == 200 and "<iframe sandbox" in page.text
            assert httpx.get(preview, timeout=30).status_code == 401

            states = {
                n: wait_for_state(api, f"campaign_{n}", runs[n], budget, seen) for n in ANSWERS
            }
            expected = {"approved": "success", "rejected": "success", "expired": "failed"}
            assert states == expected, f"{states}\n{budget}"
            # Asked once: a second ask would have erased the answer given to the first.
            for name in ("approved", "rejected"):
                detail = api.get(hitl_path(f"campaign_{name}", runs[name])).json()
                assert detail["chosen_options"] == [ANSWERS[name]], f"{detail}\n{budget}"
                assert detail["responded_by_user"] == {"id": "admin", "name": "admin"}
            assert api.get(f"/pools/{SENDGRID_POOL}").json()["slots"] == DEFAULT_POOL_SLOTS
            deadline = time.monotonic() + 90  # the triggerer sends the deadline alert
            while len(alerts.emails) + len(alerts.posts) < 4 and time.monotonic() < deadline:
                time.sleep(1)
        finally:
            airflow.stop()
    log = airflow.log_path.read_text(errors="replace") if airflow.log_path else ""
    outcome = campaign_runs(engine)
    statuses = ledger_statuses(engine)
    received = sink.state.snapshot()
    engine.dispose()

    assert {name: status for name, (status, _) in outcome.items()} == {
        "approved": "success",
        "rejected": "rejected",
        "expired": "expired",
    }
    assert outcome["rejected"][1]["decided_by"] == "admin"
    assert outcome["expired"][1]["released"] > 0 and outcome["expired"][1]["decided_by"] is None
    assert {m["custom_args"]["campaign"] for m in received} == {"approved"}
    assert len(received) == statuses[("approved", "sent")]
    for name in ("rejected", "expired"):  # released: nothing planned, nothing sent
        assert (name, "planned") not in statuses and (name, "sent") not in statuses
        assert outcome[name][1]["released"] > 0
    # Two alerts, each by email and webhook, all about the run left waiting.
    subjects = sorted(str(m["Subject"]) for m in alerts.emails)
    assert subjects == [
        "Campaign expired: run failed (finalize)",
        "Campaign expired: run missed its deadline",
    ]
    assert len(alerts.posts) == 2
    texts = alerts.texts()
    assert sum("nobody approved the run in time" in t for t in texts) == 2
    assert sum("answer a waiting approval" in t for t in texts) == 2
    assert all(runs["expired"] in t for t in texts)
    assert FIX_LOADED in log  # the scheduler runs with lifecycle.airflow.scheduler_fix
    print(f"stale executor reports dropped by the fix: {log.count(FIX_USED)}")
    assert still_running(seen) == []
    assert airflow.processes() == set()
