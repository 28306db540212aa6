"""A campaign run end to end on both backends: plan → deliver → finalize against the sink."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Engine, func, insert, select, text

from lifecycle import cli
from lifecycle.core import segments
from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import Settings, load_settings
from lifecycle.delivery import DeliveryStopped
from lifecycle.devtools.sink.thread import SinkHandle, run_sink_in_thread
from lifecycle.feedback import events
from lifecycle.feedback import suppressions as feedback_suppressions
from lifecycle.run.campaign import run_campaign
from lifecycle.run.compose import make_transport
from lifecycle.run.deliver import deliver
from lifecycle.run.finalize import finalize
from lifecycle.run.plan import Batch, PlanResult, abandon, plan
from lifecycle.run.preflight import PreflightError, preflight
from lifecycle.run.test_sends import send_tests
from lifecycle.store import runs, unknown, warehouse
from lifecycle.store.schema import (
    campaign_runs,
    coupons,
    customers,
    send_ledger,
    suppressions,
    test_sends,
)

KEY = "SG.pipeline-test-key-do-not-leak"
AS_OF = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)  # 16:00 in Yerevan, 04:00 in Los Angeles


@pytest.fixture
def sink() -> Iterator[SinkHandle]:
    with run_sink_in_thread(api_keys=[KEY], reset_after_s=0) as handle:
        yield handle


@pytest.fixture
def settings(warehouse_url: str, sink: SinkHandle, tmp_path: Path) -> Settings:
    return load_settings(
        home=tmp_path,
        warehouse_url=warehouse_url,
        transport="sendgrid",
        sendgrid_api_key=KEY,
        sendgrid_host=sink.url,
        unsubscribe_secret="pipeline-test-unsubscribe-secret",
    )


# Delivery one request per email, and in bulk (up to 10 recipients sharing a body per request).
PER_REQUEST = pytest.mark.parametrize("per_request", [1, 10], ids=["per-email", "bulk"])


def make_spec(**changes: Any) -> CampaignSpec:
    raw: dict[str, Any] = {
        "id": "onboarding",
        "status": "live",
        "description": "welcome series",
        "segment": "onboarding",
        "template": "onboarding/{occurrence_key}",
        "occurrence_key": "onboarding_step",
        "sender": {"email": "hello@shop.example", "name": "Shop"},
        "policies": {"frequency_cap": {"max_emails": 3, "days": 7}, "holdout_percent": 0},
        "delivery": {"rate_per_second": 2000, "concurrency": 16, "batch_size": 25},
    }
    for key, value in changes.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return CampaignSpec.model_validate(raw)


def add_customers(engine: Engine, count: int, start: int = 1, **overrides: Any) -> list[int]:
    """New customers who signed up an hour before AS_OF (so onboarding day 0 is due)."""
    locales = ["en", "hy", "ka"]
    rows = [
        {
            "id": i,
            "email": f"customer{i}@example.am",
            "first_name": f"Name{i}",
            "last_name": "Test",
            "locale": locales[i % 3],
            "timezone": "Asia/Yerevan",
            "signup_at": AS_OF - timedelta(hours=1),
            "marketing_consent": True,
            **overrides,
        }
        for i in range(start, start + count)
    ]
    with engine.begin() as conn:
        conn.execute(insert(customers), rows)
    return [row["id"] for row in rows]


def ledger_rows(engine: Engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(select(send_ledger).order_by(send_ledger.c.id)).mappings())


def run(
    engine: Engine, spec: CampaignSpec, settings: Settings, as_of: datetime = AS_OF
) -> dict[str, Any]:
    return run_campaign(engine, spec, settings, as_of=as_of).outcome.counts


def received_by_customer(sink: SinkHandle) -> dict[int, int]:
    counts = sink.state.recipients()
    return {int(email.removeprefix("customer").split("@")[0]): n for email, n in counts.items()}


@PER_REQUEST
def test_every_planned_customer_gets_one_email_and_a_rerun_sends_none(
    engine: Engine, settings: Settings, sink: SinkHandle, per_request: int
) -> None:
    ids = add_customers(engine, 60)
    spec = make_spec(delivery={"recipients_per_request": per_request})
    first = run_campaign(engine, spec, settings, as_of=AS_OF)
    second = run_campaign(engine, spec, settings, as_of=AS_OF)
    again = run_campaign(engine, spec, settings, as_of=AS_OF, run_key="another-key").outcome.counts

    assert received_by_customer(sink) == dict.fromkeys(ids, 1)
    requests = sink.state.stats["requests"]
    assert requests == len(ids) if per_request == 1 else requests <= len(ids) / 5
    assert first.outcome.counts["sent"] == len(ids) and first.outcome.counts["planned"] == len(ids)
    assert second.run_id == first.run_id and second.outcome.counts["sent"] == len(ids)
    assert again["planned"] == 0 and again["sent"] == 0
    rows = ledger_rows(engine)
    assert len(rows) == len(ids)
    assert set(rows["status"]) == {"sent"}
    stored = {m["custom_args"]["send_id"]: m["message_id"] for m in sink.state.snapshot()}
    assert dict(zip(rows["id"].astype(str), rows["message_id"], strict=True)) == stored
    with engine.connect() as conn:
        run_row = conn.execute(select(campaign_runs).where(campaign_runs.c.id == first.run_id))
        assert run_row.one().status == "success"


def test_policies_skip_with_reasons_and_nobody_skipped_gets_mail(
    engine: Engine, settings: Settings, sink: SinkHandle
) -> None:
    ids = add_customers(engine, 40)
    no_consent = add_customers(engine, 3, start=100, marketing_consent=False)
    late = add_customers(engine, 2, start=200, timezone="America/Los_Angeles")
    reachable = pd.Series([*ids[1:], *late])
    held = set(reachable[segments.holdout_mask(reachable, "onboarding", 30).to_numpy()])
    suppressed_id = ids[0]
    capped_id = next(i for i in ids[1:] if i not in held)
    with engine.begin() as conn:
        conn.execute(
            insert(suppressions),
            [
                {
                    "email": f"customer{suppressed_id}@example.am",
                    "scope": "global",
                    "reason": "unsubscribe",
                    "source": "link",
                    "created_at": AS_OF - timedelta(days=30),
                }
            ],
        )
        conn.execute(
            insert(send_ledger),
            [
                {
                    "campaign_id": "other",
                    "occurrence_key": "x",
                    "customer_id": capped_id,
                    "run_id": 0,
                    "status": "sent",
                    "template": "other",
                    "planned_at": AS_OF - timedelta(days=2),
                    "sent_at": AS_OF - timedelta(days=2),
                }
            ],
        )
    spec = make_spec(
        policies={"holdout_percent": 30, "frequency_cap": {"max_emails": 1, "days": 7}}
    )
    counts = run(engine, spec, settings)

    rows = ledger_rows(engine).query("campaign_id == 'onboarding'").set_index("customer_id")
    assert held - set(late)  # the data exercises the holdout
    expected = {suppressed_id: "suppressed", capped_id: "frequency_cap"}
    expected |= dict.fromkeys(no_consent, "no_consent") | dict.fromkeys(held, "holdout")
    skipped = rows[rows["status"] == "skipped"]["reason"].to_dict()
    assert skipped == expected
    assert counts["skipped"] == pd.Series(expected).value_counts().to_dict()

    late = [i for i in late if i not in held]
    assert late and set(rows.loc[late, "status"]) == {"planned"}
    opens = datetime(2026, 11, 24, 17, 0, tzinfo=UTC)  # 09:00 in Los Angeles
    assert set(rows.loc[late, "send_after"]) == {opens}
    assert counts["waiting"] == len(late)

    received = received_by_customer(sink)
    should_get = set(ids) - set(expected)
    assert received == dict.fromkeys(should_get, 1)

    later = run(engine, spec, settings, as_of=opens + timedelta(minutes=5))
    assert later["sent"] == len(late)
    assert received_by_customer(sink) == dict.fromkeys(should_get | set(late), 1)


def test_window_rows_expire_after_the_next_local_day(
    engine: Engine, settings: Settings, sink: SinkHandle
) -> None:
    late = add_customers(engine, 2, timezone="America/Los_Angeles")
    spec = make_spec()
    run(engine, spec, settings)
    much_later = AS_OF + timedelta(days=2)  # after the end of the next local day; not day 3 yet
    counts = run_campaign(engine, spec, settings, as_of=much_later).outcome.counts
    rows = ledger_rows(engine)
    assert set(rows["reason"]) == {"expired"} and len(rows) == len(late)
    assert counts["sent"] == 0
    assert sink.state.snapshot() == []


@PER_REQUEST
def test_exactly_once_under_injected_faults(
    engine: Engine, settings: Settings, sink: SinkHandle, per_request: int
) -> None:
    ids = add_customers(engine, 120)
    spec = make_spec(delivery={"recipients_per_request": per_request})
    # random faults, and at least one of each for certain (bulk mode makes few requests)
    sink.state.faults.update({"rate_429": 0.1, "rate_5xx": 0.1, "fail_next": ["429", "503"]})
    counts = run(engine, spec, settings)
    assert sink.state.stats["429"] > 0 and sink.state.stats["500"] + sink.state.stats["503"] > 0
    # retries that ran out are failed+retryable and re-planned by the next run
    sink.state.faults.update({"rate_429": 0, "rate_5xx": 0})
    run(engine, spec, settings, as_of=AS_OF + timedelta(minutes=30))
    assert counts["unknown"] == 0
    assert received_by_customer(sink) == dict.fromkeys(ids, 1)
    assert set(ledger_rows(engine)["status"]) == {"sent"}


def test_a_retried_failure_still_waits_for_the_customers_window(
    engine: Engine, settings: Settings, sink: SinkHandle
) -> None:
    ids = add_customers(engine, 3)  # Asia/Yerevan: 16:00 at AS_OF
    sink.state.faults.update({"rate_5xx": 1.0})
    assert run(engine, make_spec(), settings)["failed"] == 3
    sink.state.faults.update({"rate_5xx": 0})
    evening = AS_OF + timedelta(hours=6)  # 22:00 in Yerevan: outside 09:00-20:00
    assert run(engine, make_spec(), settings, as_of=evening)["sent"] == 0
    rows = ledger_rows(engine)
    assert set(rows["status"]) == {"planned"}
    next_morning = datetime(2026, 11, 25, 5, 0, tzinfo=UTC)  # 09:00 in Yerevan
    assert set(rows["send_after"]) == {next_morning}
    assert run(engine, make_spec(), settings, as_of=next_morning)["sent"] == 3
    assert received_by_customer(sink) == dict.fromkeys(ids, 1)


@PER_REQUEST
def test_an_address_suppressed_after_planning_is_not_mailed(
    engine: Engine, settings: Settings, sink: SinkHandle, per_request: int
) -> None:
    ids = add_customers(engine, 20)
    spec = make_spec(
        delivery={"recipients_per_request": per_request},
        coupon={"discount_percent": 10, "valid_days": 7},
    )
    planned = plan(engine, spec, settings, run_key="dag-run-1", as_of=AS_OF)
    with engine.begin() as conn:  # unsubscribes while the run waits for its delivery tasks
        conn.execute(
            insert(suppressions),
            {
                "email": "customer7@example.am",
                "scope": "global",
                "reason": "unsubscribe",
                "source": "link",
                "created_at": AS_OF,
            },
        )
    delivered = [
        deliver(engine, spec, settings, run_id=planned.run_id, batch=b, attempt="t1")
        for b in planned.batches
    ]
    counts = finalize(engine, spec, run_id=planned.run_id).counts
    assert sum(d.suppressed for d in delivered) == 1
    assert (counts["sent"], counts["skipped"]) == (19, {"suppressed": 1})
    assert received_by_customer(sink) == {i: 1 for i in ids if i != 7}
    with engine.connect() as conn:
        assert 7 not in set(conn.execute(select(coupons.c.customer_id)).scalars())


def test_a_mixed_case_address_unsubscribed_after_planning_is_not_mailed(
    engine: Engine, settings: Settings, sink: SinkHandle
) -> None:
    add_customers(engine, 6)
    add_customers(engine, 1, start=7, email="Customer7@Example.AM")
    add_customers(engine, 3, start=8)
    spec = make_spec()
    planned = plan(engine, spec, settings, run_key="dag-run-1", as_of=AS_OF)
    with engine.begin() as conn:  # the unsubscribe page stores the address as typed
        feedback_suppressions.add(
            conn,
            [
                feedback_suppressions.row(
                    "CUSTOMER7@example.am", "global", "unsubscribe", "link", AS_OF
                )
            ],
        )
    for batch in planned.batches:
        deliver(engine, spec, settings, run_id=planned.run_id, batch=batch, attempt="t1")
    counts = finalize(engine, spec, run_id=planned.run_id).counts
    assert (counts["sent"], counts["skipped"]) == (9, {"suppressed": 1})
    assert "customer7@example.am" not in sink.state.recipients()


def test_a_504_is_unknown_never_retried_and_resolved_by_sendgrids_event(
    engine: Engine, settings: Settings, sink: SinkHandle
) -> None:
    add_customers(engine, 5)
    sink.state.faults.update({"fail_next": ["504"]})  # kept by the sink, then answered 504
    counts = run(engine, make_spec(), settings)
    assert (counts["sent"], counts["unknown"], counts["failed"]) == (4, 1, 0)
    assert set(sink.state.send_ids().values()) == {1} and len(sink.state.send_ids()) == 5
    rows = ledger_rows(engine)
    row = rows[rows["status"] == "unknown"].iloc[0]
    assert (row["http_status"], row["reason"], row["retryable"]) == (504, "gateway_timeout", None)
    with engine.connect() as conn:
        assert runs.get_run(conn, int(row["run_id"])).status == "failed"
    # SendGrid had accepted it: its processed event makes the row sent.
    event = {
        "event": "processed",
        "email": row["email"],
        "timestamp": int(AS_OF.timestamp()) + 5,
        "sg_event_id": "processed-504",
        "send_id": str(row["id"]),
        "campaign": "onboarding",
    }
    result = events.ingest_body(engine, json.dumps([event]).encode(), AS_OF)
    assert result.resolved_unknown == 1
    assert ledger_rows(engine).set_index("id").loc[row["id"], "status"] == "sent"


def advisory_lock_waiters(engine: Engine) -> int:
    waiting = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
    with engine.connect() as conn:
        return conn.execute(waiting).scalar_one()


@pytest.mark.postgres
def test_campaigns_plan_one_at_a_time_so_the_frequency_cap_holds(
    pg_url: str, sink: SinkHandle, tmp_path: Path
) -> None:
    engine = warehouse.make_engine(pg_url)
    settings = load_settings(
        home=tmp_path, warehouse_url=pg_url, sendgrid_api_key=KEY, sendgrid_host=sink.url
    )
    ids = add_customers(engine, 5)
    with engine.connect() as other_campaign, other_campaign.begin():
        # it is counting and inserting one of the same customers
        runs.lock_for_planning(other_campaign, run_id=0, customer_ids=ids[-1:])
        planned: list[PlanResult] = []
        thread = threading.Thread(
            target=lambda: planned.append(
                plan(engine, make_spec(), settings, run_key="r1", as_of=AS_OF)
            )
        )
        thread.start()
        deadline = time.monotonic() + 60
        while not advisory_lock_waiters(engine):
            assert time.monotonic() < deadline, "plan never waited for the lock"
            time.sleep(0.05)
        assert planned == []
    thread.join(timeout=60)
    assert planned[0].planned == 5
    engine.dispose()


@PER_REQUEST
def test_sandbox_sends_validate_and_leave_every_customer_to_the_real_send(
    engine: Engine, settings: Settings, sink: SinkHandle, per_request: int
) -> None:
    ids = add_customers(engine, 8)
    spec = make_spec(delivery={"recipients_per_request": per_request})
    sandbox = make_spec(delivery={"recipients_per_request": per_request, "sandbox_mode": True})
    counts = run(engine, sandbox, settings)
    assert (counts["sent"], counts["skipped"]) == (0, {"sandbox": 8})
    assert [m["sandbox"] for m in sink.state.snapshot()] == [True] * 8
    assert run(engine, sandbox, settings, as_of=AS_OF + timedelta(minutes=5))["skipped"] == {}
    assert len(sink.state.snapshot()) == 8  # still in sandbox mode: validated once is enough

    counts = run(engine, spec, settings, as_of=AS_OF + timedelta(minutes=10))
    assert (counts["sent"], counts["skipped"]) == (8, {})
    real = [m for m in sink.state.snapshot() if not m["sandbox"]]
    assert sorted(int(m["custom_args"]["send_id"]) for m in real) == sorted(
        ledger_rows(engine)["id"]
    )
    assert {m["to"][0] for m in real} == {f"customer{i}@example.am" for i in ids}
    assert run(engine, spec, settings, as_of=AS_OF + timedelta(minutes=15))["sent"] == 0


def test_sandbox_test_sends_are_recorded_as_such_and_not_repeated_on_retry(
    engine: Engine, settings: Settings, sink: SinkHandle
) -> None:
    add_customers(engine, 2)
    sandbox = make_spec(delivery={"sandbox_mode": True})
    for _try in range(2):
        validated = send_tests(
            engine, sandbox, settings, run_key="t", as_of=AS_OF, recipients=["qa@shop.example"]
        )
    assert validated == 0  # the retry had nothing left to send
    assert len(sink.state.snapshot()) == 2
    with engine.connect() as conn:
        assert set(conn.execute(select(test_sends.c.status)).scalars()) == {"sandbox"}


def test_a_run_whose_planning_failed_is_recorded_failed_not_left_running(
    engine: Engine, settings: Settings
) -> None:
    spec = make_spec()
    abandon(engine, spec, run_key="never-started")  # no row yet: nothing to do
    with engine.begin() as conn:
        run_id = runs.ensure_run(conn, spec.id, "dag-run-1", AS_OF, False, AS_OF)
    abandon(engine, spec, run_key="dag-run-1")
    with engine.connect() as conn:
        row = runs.get_run(conn, run_id)
    assert row.status == "failed" and row.counts["planned"] == 0 and row.finished_at


@PER_REQUEST
def test_a_refused_key_stops_every_batch_of_the_run_until_it_is_planned_again(
    engine: Engine, settings: Settings, sink: SinkHandle, per_request: int
) -> None:
    ids = add_customers(engine, 60)
    spec = make_spec(delivery={"recipients_per_request": per_request})  # 25 rows per batch
    wrong = load_settings(**{**settings.__dict__, "sendgrid_api_key": "SG.wrong-key"})
    planned = plan(engine, spec, wrong, run_key="dag-run-1", as_of=AS_OF)
    first, *others = planned.batches
    assert len(others) == 2
    with pytest.raises(DeliveryStopped, match="401"):
        deliver(engine, spec, wrong, run_id=planned.run_id, batch=first, attempt="t1")
    refused = sink.state.stats["401"]
    assert 0 < refused <= spec.delivery.concurrency
    for batch in others:  # the other mapped tasks start, and send nothing
        with pytest.raises(DeliveryStopped, match=r"the run was stopped: .*401"):
            deliver(engine, spec, wrong, run_id=planned.run_id, batch=batch, attempt="t1")
    assert sink.state.stats["401"] == refused
    outcome = finalize(engine, spec, run_id=planned.run_id)
    counts = outcome.counts
    assert (outcome.status, counts["pending"], counts["sent"]) == ("stopped", 60, 0)
    assert "401" in counts["stopped"] and "SG.wrong-key" not in counts["stopped"]

    # the key fixed, the DAG run cleared from `plan`: the run resumes and sends everyone once
    again = plan(engine, spec, settings, run_key="dag-run-1", as_of=AS_OF)
    assert again.run_id == planned.run_id
    for batch in again.batches:
        deliver(engine, spec, settings, run_id=again.run_id, batch=batch, attempt="t2")
    outcome = finalize(engine, spec, run_id=again.run_id)
    assert (outcome.status, outcome.counts["sent"]) == ("success", 60)
    assert received_by_customer(sink) == dict.fromkeys(ids, 1)


@PER_REQUEST
def test_dropped_connections_are_reported_then_requeued_by_a_human(
    engine: Engine, settings: Settings, sink: SinkHandle, per_request: int
) -> None:
    ids = add_customers(engine, 50)
    spec = make_spec(delivery={"recipients_per_request": per_request})
    sink.state.faults.update({"fail_next": ["drop", "drop", "drop"]})
    counts = run(engine, spec, settings)
    # Every row of a dropped request is unknown: 3 requests of 1, or of up to 10 rows each.
    dropped = counts["unknown"]
    assert dropped == 3 if per_request == 1 else 3 < dropped <= 30
    assert counts["sent"] == len(ids) - dropped
    received = received_by_customer(sink)
    assert set(received.values()) == {1} and len(received) == len(ids) - dropped

    # A later run does not touch them: their fate is unknown.
    later = AS_OF + timedelta(minutes=30)
    assert run(engine, spec, settings, as_of=later)["sent"] == 0
    # The operator checked SendGrid's activity feed: they never arrived.
    with engine.begin() as conn:
        unresolved = unknown.unresolved_ids(conn, "onboarding", attempted_before=None)
        assert unknown.requeue(conn, "onboarding", unresolved) == dropped
    run(engine, spec, settings, as_of=later + timedelta(minutes=30))
    assert received_by_customer(sink) == dict.fromkeys(ids, 1)


DELIVER_SCRIPT = """
import json, sys
from lifecycle.run.deliver import deliver
from lifecycle.run.plan import Batch
from lifecycle.store import warehouse
from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import load_settings
settings = load_settings()
spec = CampaignSpec.model_validate_json(sys.argv[1])
batch = Batch.from_dict(json.loads(sys.argv[3]))
engine = warehouse.make_engine(settings.warehouse_url)
deliver(engine, spec, settings, run_id=int(sys.argv[2]), batch=batch, attempt="doomed")
"""


@PER_REQUEST
@pytest.mark.slow
def test_killed_delivery_rerun_sends_the_rest_once_and_reports_unknown(
    engine: Engine,
    settings: Settings,
    sink: SinkHandle,
    warehouse_url: str,
    tmp_path: Path,
    per_request: int,
) -> None:
    ids = add_customers(engine, 300)
    spec = make_spec(
        delivery={"recipients_per_request": per_request, "batch_size": 1000, "concurrency": 8}
    )
    planned = plan(engine, spec, settings, run_key="kill", as_of=AS_OF)
    (batch,) = planned.batches
    sink.state.faults.update({"latency_ms": 40})
    env = {
        **os.environ,
        "LIFECYCLE_HOME": str(tmp_path),
        "LIFECYCLE_WAREHOUSE_URL": warehouse_url,
        "LIFECYCLE_TRANSPORT": "sendgrid",
        "SENDGRID_API_KEY": KEY,
        "LIFECYCLE_SENDGRID_HOST": sink.url,
        "LIFECYCLE_UNSUBSCRIBE_SECRET": settings.unsubscribe_secret or "",
    }
    args = [spec.model_dump_json(), str(planned.run_id), json.dumps(batch.to_dict())]
    child = subprocess.Popen([sys.executable, "-c", DELIVER_SCRIPT, *args], env=env)
    deadline = time.monotonic() + 120
    while len(sink.state.snapshot()) < 60 and child.poll() is None:
        assert time.monotonic() < deadline, "the delivery subprocess made no progress"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    time.sleep(0.2)  # requests already in flight land at the sink: the "unknown" case

    result = deliver(engine, spec, settings, run_id=planned.run_id, batch=batch, attempt="rescue")
    counts = finalize(engine, spec, run_id=planned.run_id).counts

    rows = ledger_rows(engine).set_index("id")
    unknown = set(rows.index[rows["status"] == "unknown"])
    assert result.interrupted == len(unknown) > 0
    assert counts["unknown"] == len(unknown) and counts["sent"] == len(ids) - len(unknown)
    received = {int(k): n for k, n in sink.state.send_ids().items()}
    assert set(received.values()) == {1}  # nobody twice
    sent = set(rows.index[rows["status"] == "sent"])
    assert sent <= set(received)  # every recorded send arrived
    assert set(received) <= sent | unknown  # only unknown rows may have arrived unrecorded
    assert sent | unknown == set(rows.index)  # everyone else was sent by the rerun


CRASH_SCRIPT = DELIVER_SCRIPT.replace('attempt="doomed"', "attempt=sys.argv[4]")


def sending_rows(engine: Engine, attempt: str) -> int:
    query = select(func.count()).where(
        send_ledger.c.status == "sending", send_ledger.c.claimed_by == attempt
    )
    with engine.connect() as conn:
        return conn.execute(query).scalar_one()


@pytest.mark.slow
@pytest.mark.parametrize("per_request", [1, 20])
def test_a_killed_delivery_leaves_at_most_the_documented_bound_unknown_and_nobody_twice(
    engine: Engine,
    settings: Settings,
    sink: SinkHandle,
    warehouse_url: str,
    tmp_path: Path,
    per_request: int,
) -> None:
    """SIGKILL the delivering process at random points, and once at its fullest (as many
    claimed rows without an outcome as it gets): never more than 500 + 3 x concurrency x
    recipients per request rows become unknown (the README's bound), nobody mailed twice."""
    ids = add_customers(engine, 4000)  # more than the four attempts can take
    delivery = {"batch_size": 5000, "concurrency": 4, "recipients_per_request": per_request}
    spec = make_spec(delivery=delivery)
    bound = 500 + 3 * spec.delivery.concurrency * per_request
    planned = plan(engine, spec, settings, run_key="crashes", as_of=AS_OF)
    (batch,) = planned.batches
    sink.state.faults.update({"latency_ms": 2})
    env = {
        **os.environ,
        "LIFECYCLE_HOME": str(tmp_path),
        "LIFECYCLE_WAREHOUSE_URL": warehouse_url,
        "LIFECYCLE_TRANSPORT": "sendgrid",
        "SENDGRID_API_KEY": KEY,
        "LIFECYCLE_SENDGRID_HOST": sink.url,
        "LIFECYCLE_UNSUBSCRIBE_SECRET": settings.unsubscribe_secret or "",
    }
    args = [spec.model_dump_json(), str(planned.run_id), json.dumps(batch.to_dict())]
    rng = random.Random(15)
    left_unknown = []
    fullest = 0
    for kill, at_fullest in enumerate([False, False, False, True]):
        attempt = f"doomed-{kill}"
        received_before = len(sink.state.snapshot())
        after = rng.randrange(20, 400)
        child = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT, *args, attempt], env=env)
        deadline = time.monotonic() + 120
        while child.poll() is None:
            assert time.monotonic() < deadline, "the delivery subprocess made no progress"
            sent_here = len(sink.state.snapshot()) - received_before
            held = sending_rows(engine, attempt)  # what a kill now would leave unknown
            fullest = max(fullest, held)
            if at_fullest:  # past the bound, or long enough to have filled up many times
                if held > bound or sent_here >= 1000:
                    break
            elif sent_here >= after:
                break
            time.sleep(0.005)
        assert child.poll() is None, "the attempt ended before it could be killed"
        child.send_signal(signal.SIGKILL)
        child.wait()
        left_unknown.append(sending_rows(engine, attempt))
    assert all(0 < n <= bound for n in left_unknown), (left_unknown, bound)
    assert fullest <= bound, (fullest, bound)

    deliver(engine, spec, settings, run_id=planned.run_id, batch=batch, attempt="rescue")
    counts = finalize(engine, spec, run_id=planned.run_id).counts
    time.sleep(0.2)  # requests in flight at a kill land at the sink
    received = {int(k): n for k, n in sink.state.send_ids().items()}
    assert set(received.values()) == {1}  # nobody twice
    rows = ledger_rows(engine).set_index("id")
    sent = set(rows.index[rows["status"] == "sent"])
    unknown_ids = set(rows.index[rows["status"] == "unknown"])
    assert counts["unknown"] == len(unknown_ids) == sum(left_unknown)
    assert sent <= set(received) <= sent | unknown_ids
    assert sent | unknown_ids == set(rows.index) and len(rows) == len(ids)


def test_bad_key_stops_the_run_and_leaves_rows_planned(
    engine: Engine, settings: Settings, sink: SinkHandle
) -> None:
    add_customers(engine, 30)
    wrong = load_settings(**{**settings.__dict__, "sendgrid_api_key": "SG.wrong"})
    with pytest.raises(DeliveryStopped, match="401"):
        run(engine, make_spec(), wrong)
    rows = ledger_rows(engine)
    assert set(rows["status"]) == {"planned"}
    assert rows["attempts"].max() == 0
    assert sink.state.snapshot() == []


def test_api_key_never_in_logs_or_the_ledger(
    engine: Engine, settings: Settings, sink: SinkHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    add_customers(engine, 20)
    sink.state.faults.update({"fail_next": ["429", "500", "drop"]})
    run(engine, make_spec(), settings)
    with engine.connect() as conn:
        dump = repr(conn.execute(select(send_ledger)).all())
        dump += repr(conn.execute(select(campaign_runs)).all())
    assert "customer1@example.am" in dump  # the dump is real
    assert KEY not in dump
    assert KEY not in caplog.text
    assert KEY not in repr(settings) and KEY not in repr(make_transport(settings, make_spec()))


def test_dry_run_renders_every_email_and_writes_sends_and_issues_nothing(
    engine: Engine, settings: Settings, sink: SinkHandle
) -> None:
    add_customers(engine, 10)
    add_customers(engine, 2, start=50, marketing_consent=False)
    spec = make_spec(coupon={"discount_percent": 15, "valid_days": 7})
    counts = run_campaign(engine, spec, settings, as_of=AS_OF, dry_run=True).outcome.counts
    assert counts["planned"] == 10 and counts["skipped"] == {"no_consent": 2}
    assert (counts["rendered"], counts["render_errors"]) == (10, 0)
    assert ledger_rows(engine).empty
    with engine.connect() as conn:
        assert conn.execute(select(coupons)).all() == []
    assert sink.state.snapshot() == []
    assert run(engine, spec, settings)["sent"] == 10
    again = run_campaign(engine, spec, settings, as_of=AS_OF, dry_run=True).outcome.counts
    assert again["planned"] == 0  # what a real run would add now: nothing


@pytest.fixture
def fragile_settings(settings: Settings, tmp_path: Path) -> Settings:
    """Templates where one customer's email cannot render: preflight's samples all pass."""
    templates = tmp_path / "templates"
    shutil.copytree(settings.templates_dir, templates)
    subject = templates / "onboarding" / "day0" / "en" / "subject.txt"
    broken = '{% if first_name == "Broken" %}{{ 1 // 0 }}{% endif %}'
    subject.write_text(broken + subject.read_text(encoding="utf-8"), encoding="utf-8")
    return load_settings(**{**settings.__dict__, "templates_dir": templates})


@PER_REQUEST
def test_an_email_that_does_not_render_is_recorded_and_the_rest_are_sent(
    engine: Engine, fragile_settings: Settings, sink: SinkHandle, per_request: int
) -> None:
    add_customers(engine, 6)
    (broken,) = add_customers(engine, 1, start=30, first_name="Broken", locale="en")
    counts = run(
        engine, make_spec(delivery={"recipients_per_request": per_request}), fragile_settings
    )
    assert (counts["sent"], counts["failed"]) == (6, 1)
    assert broken not in received_by_customer(sink) and len(received_by_customer(sink)) == 6
    row = ledger_rows(engine).set_index("customer_id").loc[broken]
    assert (row["status"], row["reason"], bool(row["retryable"])) == (
        "failed",
        "render_error",
        False,
    )
    assert "ZeroDivisionError" in row["error"]


def test_dry_run_names_the_emails_that_would_not_render(
    engine: Engine, fragile_settings: Settings, sink: SinkHandle
) -> None:
    add_customers(engine, 6)
    (broken,) = add_customers(engine, 1, start=30, first_name="Broken", locale="en")
    counts = run_campaign(
        engine, make_spec(), fragile_settings, as_of=AS_OF, dry_run=True
    ).outcome.counts
    assert (counts["planned"], counts["rendered"], counts["render_errors"]) == (7, 6, 1)
    (example,) = counts["render_error_examples"]
    assert re.fullmatch(
        rf"customer {broken}: TemplateProblem: \S+/onboarding/day0/en/subject.txt:1: "
        "ZeroDivisionError: integer division or modulo by zero",
        example,
    )
    assert ledger_rows(engine).empty and sink.state.snapshot() == []


def test_a_customer_with_an_unknown_timezone_is_mailed_on_utc(
    engine: Engine, settings: Settings, sink: SinkHandle
) -> None:
    (customer,) = add_customers(engine, 1, timezone="Mars/Olympus_Mons")
    counts = run(engine, make_spec(), settings)
    assert (counts["sent"], counts["failed"]) == (1, 0)
    assert received_by_customer(sink) == {customer: 1}


def test_limit_plans_at_most_n(engine: Engine, settings: Settings, sink: SinkHandle) -> None:
    add_customers(engine, 30)
    counts = run_campaign(engine, make_spec(), settings, as_of=AS_OF, limit=7).outcome.counts
    assert counts["sent"] == 7 and len(sink.state.snapshot()) == 7


def test_a_limited_run_sends_only_n_new_emails_even_retried_or_with_rows_waiting(
    engine: Engine, settings: Settings, sink: SinkHandle
) -> None:
    waiting = add_customers(engine, 4, timezone="America/Los_Angeles")  # 04:00 there
    assert run(engine, make_spec(), settings)["waiting"] == 4
    evening = AS_OF + timedelta(hours=6)  # 18:00 UTC, 10:00 in Los Angeles
    fresh = add_customers(
        engine, 5, start=10, timezone="UTC", signup_at=evening - timedelta(hours=1)
    )
    for _try in range(2):  # a retried plan counts what its first try planned
        planned = plan(engine, make_spec(), settings, run_key="limited", as_of=evening, limit=2)
    assert planned.planned == 2 and planned.waiting == 0
    for batch in planned.batches:
        deliver(engine, make_spec(), settings, run_id=planned.run_id, batch=batch, attempt="t")
    assert len(received_by_customer(sink)) == 2
    assert run(engine, make_spec(), settings, as_of=evening)["sent"] == 4 + 3
    assert received_by_customer(sink) == dict.fromkeys(waiting + fresh, 1)


def test_batches_cover_due_rows_and_stay_under_the_map_limit(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_customers(engine, 57)
    add_customers(engine, 3, start=500, timezone="America/Los_Angeles")
    spec = make_spec(delivery={"batch_size": 10})
    result = plan(engine, spec, settings, run_key="b", as_of=AS_OF)
    assert [b.size for b in result.batches] == [10, 10, 10, 10, 10, 7]
    rows = ledger_rows(engine)
    due = rows[rows["send_after"] <= AS_OF]["id"]
    covered = [i for b in result.batches for i in due if b.first_id <= i <= b.last_id]
    assert sorted(covered) == sorted(due)
    assert result.waiting == 3 and result.planned == 60
    assert Batch.from_dict(result.batches[0].to_dict()) == result.batches[0]

    monkeypatch.setattr("lifecycle.run.plan.MAX_BATCHES", 4)
    again = plan(engine, spec, settings, run_key="b", as_of=AS_OF)
    assert len(again.batches) <= 4 and sum(b.size for b in again.batches) == 57
    assert again.run_id == result.run_id


def test_outbox_transport_writes_one_eml_per_send(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    ids = add_customers(engine, 12)
    outbox = load_settings(**{**settings.__dict__, "transport": "outbox"})
    counts = run(engine, make_spec(), outbox)
    files = sorted((tmp_path / "outbox" / "onboarding").glob("*.eml"))
    assert counts["sent"] == len(ids) == len(files)
    rows = ledger_rows(engine)
    assert sorted(f"{i}.eml" for i in rows["id"]) == sorted(f.name for f in files)
    assert rows["message_id"].notna().all()


def test_send_tests_reach_only_the_test_recipients(
    engine: Engine, settings: Settings, sink: SinkHandle
) -> None:
    add_customers(engine, 10)
    team = ["qa@shop.example", "crm@shop.example"]
    spec = make_spec()
    sent = send_tests(engine, spec, settings, run_key="t", as_of=AS_OF, recipients=team, limit=3)
    again = send_tests(engine, spec, settings, run_key="t", as_of=AS_OF, recipients=team, limit=3)
    assert (sent, again) == (6, 0)
    assert sink.state.recipients() == dict.fromkeys(team, 3)
    assert all(m["subject"].startswith("[TEST] ") for m in sink.state.snapshot())
    assert ledger_rows(engine).empty
    with engine.connect() as conn:
        rows = conn.execute(select(test_sends)).all()
    assert len(rows) == 6 and {r.status for r in rows} == {"sent"}


def test_preflight_says_what_to_fix(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    preflight(engine, make_spec(), settings, as_of=AS_OF)
    no_key = load_settings(**{**settings.__dict__, "sendgrid_api_key": None})
    with pytest.raises(PreflightError, match="SENDGRID_API_KEY"):
        preflight(engine, make_spec(), no_key, as_of=AS_OF)
    missing = make_spec(template="nope/{occurrence_key}")
    with pytest.raises(PreflightError, match="nope"):
        preflight(engine, missing, settings, as_of=AS_OF)
    empty = warehouse.make_engine(f"sqlite:///{tmp_path}/empty.db")
    with pytest.raises(PreflightError, match="lifecycle db upgrade"):
        preflight(empty, make_spec(), settings, as_of=AS_OF)
    with pytest.raises(ValueError, match="timezone-aware"):
        preflight(engine, make_spec(), settings, as_of=AS_OF.replace(tzinfo=None))


def test_lifecycle_run_prints_the_outcome_and_dry_runs_first(
    engine: Engine,
    warehouse_url: str,
    settings: Settings,
    sink: SinkHandle,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    add_customers(engine, 5)
    add_customers(engine, 2, start=50, marketing_consent=False)
    monkeypatch.setenv("LIFECYCLE_HOME", str(settings.home))
    monkeypatch.setenv("LIFECYCLE_TRANSPORT", "sendgrid")
    monkeypatch.setenv("SENDGRID_API_KEY", KEY)
    monkeypatch.setenv("LIFECYCLE_SENDGRID_HOST", sink.url)
    monkeypatch.setenv("LIFECYCLE_UNSUBSCRIBE_SECRET", "cli-test-unsubscribe-secret")
    argv = ["--warehouse", warehouse_url, "run", "onboarding", "--as-of", AS_OF.isoformat()]

    assert cli.main([*argv, "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "onboarding as of 2026-11-24 12:00 UTC via sendgrid (dry run: nothing written or sent)"
    )
    assert lines[1:] == [
        "planned: 5",
        "skipped: 2 (no_consent: 2)",
        "rendered: 5  render errors: 0",
    ]
    assert sink.state.snapshot() == []

    assert cli.main([*argv, "--limit", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == [
        "planned: 3",
        "skipped: 0",
        "sent: 3  failed: 0  unknown: 0  waiting for the send window: 0",
    ]
    assert cli.main(argv) == 0  # the same moment is the same run: it finishes the other two
    assert "planned: 5\nskipped: 2 (no_consent: 2)\nsent: 5  failed: 0" in capsys.readouterr().out
    assert sorted(received_by_customer(sink).values()) == [1] * 5
