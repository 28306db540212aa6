"""Every campaign DAG run for real with `dag.test()`: a seeded warehouse, the features DAG,
the SendGrid-compatible sink on loopback. Checked against the ledger and what the sink got."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alert_receivers import ALERT_TO, alert_receivers
from sqlalchemy import Engine

from lifecycle.airflow.campaign_dag import build_campaign_dag
from lifecycle.airflow.features_dag import build_features_dag
from lifecycle.airflow.schedules import FEATURES_ASSET, campaign_asset
from lifecycle.core import features
from lifecycle.core.campaigns import load_campaigns
from lifecycle.core.config import load_settings
from lifecycle.devtools import seed
from lifecycle.devtools.sink.thread import SinkHandle, run_sink_in_thread
from lifecycle.store import schema, warehouse

AS_OF = datetime(2026, 11, 24, 11, 0, tzinfo=UTC)  # 11:00 UTC: inside most local send windows
SPECS = load_campaigns(load_settings().campaigns_dir).specs
LIVE = {campaign_id: spec for campaign_id, spec in SPECS.items() if spec.live}  # drafts never send
API_KEY = "SG.dag-test-key"


@dataclass
class World:
    engine: Engine
    sink: SinkHandle
    home: Path


@contextmanager
def make_world(
    warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    """A seeded warehouse and a sink, reached only through the Airflow connections."""
    engine = warehouse.make_engine(warehouse_url)
    seed.seed(engine, 400, seed=11, as_of=AS_OF)
    with run_sink_in_thread(api_keys=[API_KEY]) as sink:
        monkeypatch.setenv("LIFECYCLE_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("LIFECYCLE_UNSUBSCRIBE_SECRET", "dag-test-secret")
        monkeypatch.setenv(
            "AIRFLOW_CONN_LIFECYCLE_WAREHOUSE",
            json.dumps({"conn_type": "generic", "extra": {"sqlalchemy_url": warehouse_url}}),
        )
        monkeypatch.setenv(
            "AIRFLOW_CONN_SENDGRID_DEFAULT",
            json.dumps({"conn_type": "generic", "password": API_KEY, "host": sink.url}),
        )
        monkeypatch.delenv("LIFECYCLE_TRANSPORT", raising=False)
        yield World(engine, sink, tmp_path / "home")
    warehouse.engine_for.cache_clear()
    engine.dispose()


@pytest.fixture
def world(
    airflow_db: Path, warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    with make_world(warehouse_url, tmp_path, monkeypatch) as made:
        yield made


@pytest.fixture
def sqlite_world(
    airflow_db: Path, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    """One backend is enough for Airflow behaviour; features computed without Airflow."""
    with make_world(sqlite_url, tmp_path, monkeypatch) as made:
        features.materialize(made.engine, AS_OF, load_settings(warehouse_url=sqlite_url))
        yield made


def run_dag(dag_id: str, conf: dict) -> tuple[str, str]:
    dag = (
        build_features_dag()
        if dag_id == "customer_features"
        else build_campaign_dag(SPECS[dag_id.removeprefix("campaign_")])
    )
    run = dag.test(run_conf=conf)
    return run.run_id, str(run.state)


def task_states(dag_id: str, run_id: str) -> dict[str, list[str]]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    states: dict[str, list[str]] = {}
    with create_session() as session:
        for ti in session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=run_id):
            states.setdefault(ti.task_id, []).append(str(ti.state))
    return states


def run_row(engine: Engine, campaign_id: str, run_key: str) -> dict:
    runs = schema.campaign_runs
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(runs).where(runs.c.campaign_id == campaign_id, runs.c.run_key == run_key)
        ).one()
    return dict(row._mapping)


def ledger_rows(engine: Engine, **where: object) -> list[dict]:
    ledger = schema.send_ledger
    query = sa.select(ledger).where(*(ledger.c[k] == v for k, v in where.items()))
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def customers_by_id(engine: Engine) -> dict[int, dict]:
    with engine.connect() as conn:
        return {r.id: dict(r._mapping) for r in conn.execute(sa.select(schema.customers))}


def received_by(sink: SinkHandle, campaign_id: str) -> list[dict]:
    return [m for m in sink.state.snapshot() if m["custom_args"].get("campaign") == campaign_id]


def test_every_campaign_sends_once_by_the_ledger(world: World) -> None:
    _, state = run_dag("customer_features", {"as_of": AS_OF.isoformat()})
    assert state == "success"
    customers = customers_by_id(world.engine)
    total_sent = 0
    for campaign_id, spec in LIVE.items():
        run_id, state = run_dag(spec.dag_id, {"as_of": AS_OF.isoformat()})
        assert state == "success", (campaign_id, task_states(spec.dag_id, run_id))
        row = run_row(world.engine, campaign_id, run_id)
        assert row["status"] == "success"
        sent = ledger_rows(world.engine, campaign_id=campaign_id, status="sent")
        assert row["counts"]["sent"] == len(sent)
        received = received_by(world.sink, campaign_id)
        # Exactly one message per sent ledger row, to that row's customer, with consent.
        assert Counter(int(m["custom_args"]["send_id"]) for m in received) == Counter(
            r["id"] for r in sent
        )
        for r in sent:
            customer = customers[r["customer_id"]]
            assert customer["marketing_consent"]
            assert r["email"] == customer["email"]
            assert r["message_id"]
        skipped = Counter(
            r["reason"]
            for r in ledger_rows(world.engine, campaign_id=campaign_id, status="skipped")
        )
        assert skipped == Counter(row["counts"]["skipped"])
        no_consent = {i for i, c in customers.items() if not c["marketing_consent"]}
        assert not {r["customer_id"] for r in sent} & no_consent
        total_sent += len(sent)
    assert total_sent > 0, "the seeded population should give at least one campaign an audience"

    # The same as-of again (a new Airflow run): nothing new reaches anyone.
    before = len(world.sink.state.snapshot())
    for spec in LIVE.values():
        run_id, state = run_dag(spec.dag_id, {"as_of": AS_OF.isoformat()})
        assert state == "success"
        assert run_row(world.engine, spec.id, run_id)["counts"]["sent"] == 0
    assert len(world.sink.state.snapshot()) == before


def asset_events(uri: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.uri == uri)
            .order_by(AssetEvent.id)
        )
        return [dict(event.extra or {}) for event in query]


def test_assets_carry_the_snapshot_and_the_counts(sqlite_world: World) -> None:
    as_of = AS_OF.isoformat()
    _, state = run_dag("customer_features", {"as_of": as_of})
    assert state == "success"
    snapshot = asset_events(FEATURES_ASSET.uri)[-1]
    assert snapshot["as_of"] == as_of
    with sqlite_world.engine.connect() as conn:
        customers = conn.execute(sa.select(sa.func.count()).select_from(schema.customers))
        assert snapshot["row_count"] == customers.scalar_one()

    run_id, state = run_dag("campaign_loyalty", {"as_of": as_of})
    assert state == "success"
    event = asset_events(campaign_asset("loyalty").uri)[-1]
    row = run_row(sqlite_world.engine, "loyalty", run_id)
    assert event["counts"] == row["counts"]
    assert (event["campaign_id"], event["run_id"], event["as_of"]) == ("loyalty", row["id"], as_of)
    assert event["counts"]["sent"] > 0


def test_an_empty_audience_finishes_green_with_zero_sends(sqlite_world: World) -> None:
    before_any_signup = "2001-01-01T12:00:00Z"
    run_id, state = run_dag("campaign_onboarding", {"as_of": before_any_signup})
    assert state == "success"
    states = task_states("campaign_onboarding", run_id)
    assert states["deliver"] == ["skipped"]
    assert states["finalize"] == ["success"]
    row = run_row(sqlite_world.engine, "onboarding", run_id)
    assert (row["status"], row["counts"]["planned"], row["counts"]["sent"]) == ("success", 0, 0)
    assert sqlite_world.sink.state.snapshot() == []


def test_dry_run_plans_and_renders_but_sends_nothing(sqlite_world: World) -> None:
    run_id, state = run_dag("campaign_loyalty", {"as_of": AS_OF.isoformat(), "dry_run": True})
    assert state == "success"
    row = run_row(sqlite_world.engine, "loyalty", run_id)
    assert row["dry_run"] and row["counts"]["planned"] > 0
    assert row["counts"]["rendered"] == row["counts"]["planned"]
    assert ledger_rows(sqlite_world.engine, campaign_id="loyalty") == []
    assert sqlite_world.sink.state.snapshot() == []


def test_a_dry_run_with_emails_that_do_not_render_fails_the_dag_run(
    sqlite_world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(load_settings().templates_dir, templates)
    for locale in ("en", "hy", "ka"):  # preflight's sample customer renders; real ones do not
        subject = templates / "loyalty" / locale / "subject.txt"
        broken = '{% if customer.email != "customer@example.com" %}{{ 1 // 0 }}{% endif %}'
        subject.write_text(broken + subject.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setenv("LIFECYCLE_TEMPLATES_DIR", str(templates))
    run_id, state = run_dag("campaign_loyalty", {"as_of": AS_OF.isoformat(), "dry_run": True})
    assert state == "failed"
    assert task_states("campaign_loyalty", run_id) | {"deliver": []} == {
        "check_status": ["success"],
        "preflight": ["success"],
        "plan": ["success"],
        "plan_partition": ["success"],
        "gather": ["failed"],
        "deliver": [],
        "finalize": ["failed"],
    }
    row = run_row(sqlite_world.engine, "loyalty", run_id)
    assert row["status"] == "failed"
    assert row["counts"]["render_errors"] == row["counts"]["planned"] > 0
    assert "ZeroDivisionError" in row["counts"]["render_error_examples"][0]
    assert ledger_rows(sqlite_world.engine, campaign_id="loyalty") == []
    assert sqlite_world.sink.state.snapshot() == []


def test_test_recipients_get_real_emails_and_no_customer_does(sqlite_world: World) -> None:
    qa = ["qa@lifecycle-demo.shop", "marketing-lead@lifecycle-demo.shop"]
    conf = {"as_of": AS_OF.isoformat(), "test_recipients": qa, "limit": 2}
    run_id, state = run_dag("campaign_loyalty", conf)
    assert state == "success"
    assert task_states("campaign_loyalty", run_id)["finalize"] == ["skipped"]
    received = sqlite_world.sink.state.snapshot()
    assert received and {to for m in received for to in m["to"]} == set(qa)
    assert all(m["subject"].startswith("[TEST]") for m in received)
    assert ledger_rows(sqlite_world.engine, campaign_id="loyalty") == []
    with sqlite_world.engine.connect() as conn:
        recorded = conn.execute(sa.select(schema.test_sends.c.recipient)).scalars().all()
    assert Counter(recorded) == Counter(to for m in received for to in m["to"])


def test_a_mistyped_option_fails_at_preflight_without_retries_or_sends(
    sqlite_world: World, caplog: pytest.LogCaptureFixture
) -> None:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    caplog.set_level("ERROR", logger="lifecycle.airflow.notifier")
    run_id, state = run_dag("campaign_loyalty", {"as_of": AS_OF.isoformat(), "dryrun": True})
    assert state == "failed"
    states = task_states("campaign_loyalty", run_id)
    assert states["preflight"] == ["failed"]
    assert states["plan"] == ["upstream_failed"]
    with create_session() as session:
        preflight = session.query(TaskInstance).filter_by(run_id=run_id, task_id="preflight").one()
        assert preflight.try_number == 1  # a typo is not retried with backoff
    summary = [r.getMessage() for r in caplog.records if r.name == "lifecycle.airflow.notifier"]
    assert any(
        "Campaign loyalty: task preflight failed for good" in m and "dryrun" in m for m in summary
    ), summary
    assert ledger_rows(sqlite_world.engine, campaign_id="loyalty") == []
    assert sqlite_world.sink.state.snapshot() == []


def test_a_refused_key_stops_all_batches_and_finalize_still_records_the_run(
    sqlite_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = SPECS["loyalty"]
    spec = spec.model_copy(update={"delivery": spec.delivery.model_copy(update={"batch_size": 5})})
    wrong = {"conn_type": "sendgrid", "password": "SG.revoked", "host": sqlite_world.sink.url}
    monkeypatch.setenv("AIRFLOW_CONN_SENDGRID_DEFAULT", json.dumps(wrong))
    run = build_campaign_dag(spec).test(run_conf={"as_of": AS_OF.isoformat()})
    assert str(run.state) == "failed"
    states = task_states(spec.dag_id, run.run_id)
    assert len(states["deliver"]) > 1 and set(states["deliver"]) == {"failed"}
    assert states["finalize"] == ["failed"]  # it ran, recorded the run, and failed it
    row = run_row(sqlite_world.engine, "loyalty", run.run_id)
    assert row["status"] == "stopped" and "401" in row["counts"]["stopped"]
    counts = row["counts"]
    assert counts["pending"] > 0 and counts["pending"] + counts["waiting"] == counts["planned"]
    stats = sqlite_world.sink.state.stats
    assert 0 < stats["401"] <= spec.delivery.concurrency and stats["accepted"] == 0


def test_an_invalid_value_is_refused_before_a_run_exists(sqlite_world: World) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="limit"):
        run_dag("campaign_loyalty", {"limit": 0})


@pytest.mark.parametrize("trouble", ["refused key", "unknown rows"])
def test_a_stopped_run_or_unknown_rows_alert_by_email_and_webhook_once_saying_what_to_do(
    sqlite_world: World, monkeypatch: pytest.MonkeyPatch, trouble: str
) -> None:
    spec = SPECS["loyalty"]
    if trouble == "refused key":
        wrong = {"conn_type": "sendgrid", "password": "SG.revoked", "host": sqlite_world.sink.url}
        monkeypatch.setenv("AIRFLOW_CONN_SENDGRID_DEFAULT", json.dumps(wrong))
    else:  # connections dropped after the request was sent: the emails' fate is unknown
        sqlite_world.sink.state.faults.update({"rate_drop": 0.5})
    with alert_receivers() as (received, connections):
        for name, value in connections.items():
            monkeypatch.setenv(name, value)
        run = build_campaign_dag(spec).test(run_conf={"as_of": AS_OF.isoformat()})

    assert str(run.state) == "failed"
    assert len(received.emails) == len(received.posts) == 1  # finalize's, not each deliver's
    email = received.emails[0]
    assert email["To"] == ALERT_TO and email["From"] == "lifecycle@shop.example"
    assert email["Subject"] == "Campaign loyalty: run failed (finalize)"
    for text in received.texts():
        assert run.run_id in text and "What to do" in text
        if trouble == "refused key":
            assert "run stopped" in text and "check the API key" in text
        else:
            assert "may or may not have reached SendGrid" in text
            assert "lifecycle requeue-unknown loyalty" in text


# --- a draft campaign never mails its audience ----------------------------------------------
def draft_of(campaign_id: str):  # type: ignore[no-untyped-def]
    return SPECS[campaign_id].model_copy(update={"status": "draft"})


def test_a_triggered_real_run_of_a_draft_fails_before_planning(
    sqlite_world: World, caplog: pytest.LogCaptureFixture
) -> None:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    caplog.set_level("ERROR", logger="lifecycle.airflow.notifier")
    spec = draft_of("loyalty")
    run = build_campaign_dag(spec).test(run_conf={"as_of": AS_OF.isoformat()})
    assert str(run.state) == "failed"
    states = task_states(spec.dag_id, run.run_id)
    assert states["check_status"] == states["preflight"] == states["plan"] == ["skipped"]
    assert states["finalize"] == ["failed"]
    with create_session() as session:
        final = session.query(TaskInstance).filter_by(run_id=run.run_id, task_id="finalize")
        assert final.one().try_number == 1  # not retried
    summary = [r.getMessage() for r in caplog.records if r.name == "lifecycle.airflow.notifier"]
    assert len(summary) == 1 and "task finalize failed" in summary[0]
    assert "campaign loyalty is a draft" in summary[0]
    assert "set `status: live` in include/campaigns/loyalty.yaml" in summary[0]
    with sqlite_world.engine.connect() as conn:
        assert conn.execute(sa.select(schema.campaign_runs)).all() == []
    assert ledger_rows(sqlite_world.engine, campaign_id="loyalty") == []
    assert sqlite_world.sink.state.snapshot() == []


def test_a_draft_takes_dry_runs_and_test_sends(sqlite_world: World) -> None:
    dag = build_campaign_dag(draft_of("loyalty"))
    dry = dag.test(run_conf={"as_of": AS_OF.isoformat(), "dry_run": True})
    assert str(dry.state) == "success"
    assert run_row(sqlite_world.engine, "loyalty", dry.run_id)["counts"]["planned"] > 0
    qa = ["qa@lifecycle-demo.shop"]
    test = dag.test(run_conf={"as_of": AS_OF.isoformat(), "test_recipients": qa, "limit": 1})
    assert str(test.state) == "success"
    received = sqlite_world.sink.state.snapshot()
    assert [m["to"] for m in received] == [qa]
    assert ledger_rows(sqlite_world.engine, campaign_id="loyalty") == []


def test_deliver_sends_nothing_once_the_spec_is_a_draft(sqlite_world: World) -> None:
    """The spec became a draft after the run passed check_status (marked success here, as if
    it had passed while the spec was live): deliver reads the spec again and mails nobody."""
    spec = draft_of("loyalty")
    run = build_campaign_dag(spec).test(
        run_conf={"as_of": AS_OF.isoformat()}, mark_success_pattern="check_status"
    )
    assert str(run.state) == "failed"
    states = task_states(spec.dag_id, run.run_id)
    assert set(states["deliver"]) == {"failed"} and states["finalize"] == ["failed"]
    rows = ledger_rows(sqlite_world.engine, campaign_id="loyalty")
    assert {r["status"] for r in rows} == {"planned", "skipped"}  # the planned ones wait
    assert sqlite_world.sink.state.snapshot() == []


def failure_summaries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lifecycle.airflow.notifier"]


def test_missing_source_tables_fail_plan_once_with_one_line_and_a_hint(
    sqlite_world: World, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    caplog.set_level("INFO")
    schema.source.drop_all(sqlite_world.engine)
    run_id, state = run_dag("campaign_loyalty", {"as_of": AS_OF.isoformat()})
    assert state == "failed"
    assert task_states("campaign_loyalty", run_id)["plan"] == ["failed"]
    with create_session() as session:
        plan = session.query(TaskInstance).filter_by(run_id=run_id, task_id="plan").one()
        assert plan.try_number == 1  # a missing table is not retried with backoff
    line = (
        "AirflowFailException: the warehouse at sqlite:///"
        f"{sqlite_world.engine.url.database} has no table 'customers' (hint: load the source "
        "tables (`lifecycle seed` for demo data) or point the queries in include/sql/"
    )
    # the alert's "What happened" is the error's one line (then "What to do")
    happened = [
        m.split("What happened: ", 1)[1].splitlines()[0]
        for m in failure_summaries(caplog)
        if "What happened: " in m
    ]
    assert any(line in h for h in happened), caplog.text
    logged = caplog.text + capsys.readouterr().out
    assert "Task failed with exception" in logged
    assert "sqlite3.OperationalError" not in logged and "[SQL:" not in logged
    assert run_row(sqlite_world.engine, "loyalty", run_id)["status"] == "failed"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgres://lifecycle:pw-not-shown@127.0.0.1:5432/warehouse",
            "AirflowFailException: warehouse URL postgres://lifecycle:***@127.0.0.1:5432/"
            "warehouse cannot be used: Can't load plugin: sqlalchemy.dialects:postgres "
            "(hint: PostgreSQL: postgresql+psycopg://",
        ),
        (
            "postgresql+psycopg://lifecycle:pw-not-shown@127.0.0.1:1/warehouse",
            "AirflowException: cannot connect to the warehouse at postgresql+psycopg://"
            "lifecycle:***@127.0.0.1:1/warehouse: connection failed",
        ),
    ],
)
def test_a_bad_warehouse_connection_fails_preflight_with_one_line(
    sqlite_world: World,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    url: str,
    expected: str,
) -> None:
    conn = {"conn_type": "generic", "extra": {"sqlalchemy_url": url}}
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_WAREHOUSE", json.dumps(conn))
    spec = SPECS["loyalty"]
    # No retries here: the retryable connection failure would otherwise wait for its backoff.
    dag = build_campaign_dag(spec)
    for task in dag.tasks:
        task.retries = 0
    caplog.set_level("ERROR", logger="lifecycle.airflow.notifier")
    run = dag.test(run_conf={"as_of": AS_OF.isoformat()})
    assert str(run.state) == "failed"
    assert task_states(spec.dag_id, run.run_id)["preflight"] == ["failed"]
    summaries = failure_summaries(caplog)
    assert any(expected in m for m in summaries), summaries
    assert "pw-not-shown" not in caplog.text


def test_plan_partitions_are_mapped_tasks_that_plan_what_one_plan_counts(
    sqlite_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = SPECS["loyalty"]
    rehearsal, state = run_dag(spec.dag_id, {"as_of": AS_OF.isoformat(), "dry_run": True})
    assert state == "success"
    assert task_states(spec.dag_id, rehearsal)["plan_partition"] == ["success"]  # one range
    expected = run_row(sqlite_world.engine, spec.id, rehearsal)["counts"]
    assert expected["planned"] > 20
    monkeypatch.setenv("LIFECYCLE_PARTITION_SIZE", "10")
    run_id, state = run_dag(spec.dag_id, {"as_of": AS_OF.isoformat()})
    assert state == "success"
    partitions = task_states(spec.dag_id, run_id)["plan_partition"]
    assert len(partitions) > 3 and set(partitions) == {"success"}
    counts = run_row(sqlite_world.engine, spec.id, run_id)["counts"]
    assert (counts["planned"], counts["skipped"]) == (expected["planned"], expected["skipped"])
    assert counts["sent"] + counts["waiting"] == counts["planned"]  # the rest wait for the window
    rows = ledger_rows(sqlite_world.engine, campaign_id=spec.id)
    assert len({r["customer_id"] for r in rows}) == len(rows)
    assert len(received_by(sqlite_world.sink, spec.id)) == counts["sent"]


@pytest.mark.postgres
def test_the_features_snapshot_is_built_in_mapped_ranges_on_postgresql(
    airflow_db: Path, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIFECYCLE_PARTITION_SIZE", "150")
    with make_world(pg_url, tmp_path, monkeypatch) as made:
        run_id, state = run_dag("customer_features", {"as_of": AS_OF.isoformat()})
        assert state == "success"
        states = task_states("customer_features", run_id)
        assert len(states["materialize_range"]) == 3  # 400 customers, 150 a range
        assert {s for task in states.values() for s in task} == {"success"}
        with made.engine.connect() as conn:
            stored, staged = (
                conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
                for table in (schema.customer_features, schema.customer_features_next)
            )
        assert (stored, staged) == (400, 0)
        assert asset_events(FEATURES_ASSET.uri)[-1]["row_count"] == 400
