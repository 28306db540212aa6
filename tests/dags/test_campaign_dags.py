"""The shape of every campaign DAG, the trigger form, and the connections tasks read."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

import pytest
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import AssetOrTimeSchedule, Connection, CronTriggerTimetable, TriggerRule
from airflow.sdk.definitions.deadline import DeadlineReference
from airflow.sdk.definitions.param import ParamsDict
from airflow.sdk.exceptions import ParamValidationError

from lifecycle.airflow.campaign_dag import build_campaign_dag
from lifecycle.airflow.connections import SENDGRID_CONN_TYPE, runtime_settings, warehouse_url
from lifecycle.airflow.features_dag import build_features_dag
from lifecycle.airflow.notifier import CampaignFailureNotifier
from lifecycle.airflow.params import (
    TRIGGER_OPTIONS,
    TriggerOptionError,
    TriggerOptions,
    resolve_as_of,
    trigger_options,
)
from lifecycle.airflow.schedules import FEATURES_ASSET
from lifecycle.core.campaigns import Approval, load_campaigns
from lifecycle.core.config import SENDGRID_POOL, load_settings
from lifecycle.run.rates import task_rate

SPECS = load_campaigns(load_settings().campaigns_dir).specs


@pytest.fixture(scope="module", params=sorted(SPECS))
def spec_and_dag(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    spec = SPECS[request.param]
    return spec, build_campaign_dag(spec)


def test_task_graph(spec_and_dag) -> None:  # type: ignore[no-untyped-def]
    _, dag = spec_and_dag
    tasks = dag.task_dict
    assert set(tasks) == {
        "check_status",
        "preflight",
        "plan",
        "plan_partition",
        "gather",
        "deliver",
        "finalize",
    }
    assert dag.roots == [tasks["check_status"]]  # the draft gate comes before anything else
    assert tasks["preflight"].upstream_task_ids == {"check_status"}
    assert tasks["plan"].upstream_task_ids == {"preflight"}
    assert tasks["plan_partition"].upstream_task_ids == {"plan"}
    assert tasks["plan_partition"].is_mapped  # one task per customer-id range
    assert tasks["gather"].upstream_task_ids == {"plan_partition"}
    assert tasks["deliver"].upstream_task_ids == {"plan", "gather"}
    assert tasks["finalize"].upstream_task_ids == {"deliver", "preflight"}
    assert dag.leaves == [tasks["finalize"]]


def test_deliver_is_mapped_over_batches_with_bounded_parallelism(spec_and_dag) -> None:  # type: ignore[no-untyped-def]
    spec, dag = spec_and_dag
    deliver = dag.task_dict["deliver"]
    assert deliver.is_mapped
    assert deliver.max_active_tis_per_dagrun == spec.delivery.max_active_batches
    assert "batch_label" in deliver.map_index_template


def test_finalize_runs_however_the_deliveries_ended_and_announces_an_asset(spec_and_dag) -> None:  # type: ignore[no-untyped-def]
    spec, dag = spec_and_dag
    finalize = dag.task_dict["finalize"]
    assert finalize.trigger_rule == TriggerRule.ALL_DONE
    assert [a.uri for a in finalize.outlets] == [f"lifecycle://campaigns/{spec.id}"]


def test_dag_settings_follow_the_spec(spec_and_dag) -> None:  # type: ignore[no-untyped-def]
    spec, dag = spec_and_dag
    assert dag.dag_id == f"campaign_{spec.id}"
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert {"lifecycle", "campaign", spec.status, *spec.tags} <= set(dag.tags)
    assert spec.description in dag.doc_md
    assert f"**Status: {spec.status}.**" in dag.doc_md
    assert dag.dag_display_name == f"{spec.display_name} ({spec.status})"
    assert spec.template in dag.doc_md
    for task in dag.tasks:
        assert task.owner == spec.owner
        assert task.retries >= 1 and task.retry_exponential_backoff
        assert any(isinstance(cb, CampaignFailureNotifier) for cb in task.on_failure_callback)
    assert set(dag.params) == set(TRIGGER_OPTIONS)


def test_the_demo_campaigns_are_live_and_named() -> None:
    demo_campaigns = ("birthday", "feedback", "loyalty", "onboarding", "reengagement")
    assert {SPECS[c].status for c in demo_campaigns} == {"live"}
    assert all(SPECS[c].name for c in demo_campaigns)
    assert SPECS["birthday"].display_name == "Birthday discount"


def test_a_spec_without_status_is_a_draft_and_its_dag_says_so() -> None:
    spec = SPECS["birthday"].model_copy(update={"status": "draft", "name": None})
    assert spec.model_fields["status"].default == "draft"  # a missing status is a draft
    dag = build_campaign_dag(spec)
    assert dag.dag_display_name == "Birthday (draft)"
    assert "**Status: draft.**" in dag.doc_md
    assert "set `status: live` in `include/campaigns/birthday.yaml`" in dag.doc_md
    assert "draft" in dag.tags
    assert "draft" in dag.params.get_param("dry_run").schema["description_md"]


def test_schedule_follows_the_spec(spec_and_dag) -> None:  # type: ignore[no-untyped-def]
    spec, dag = spec_and_dag
    timetable = dag.timetable
    if spec.schedule.cron and spec.schedule.after_features:
        assert isinstance(timetable, AssetOrTimeSchedule)
        timetable = timetable.timetable
    if spec.schedule.cron:
        assert isinstance(timetable, CronTriggerTimetable)
        assert timetable.expression == spec.schedule.cron
        assert str(timetable.timezone) == spec.schedule.timezone
    if spec.schedule.after_features:
        assets = dag.timetable.asset_condition.objects
        assert [a.uri for a in assets] == [FEATURES_ASSET.uri]
    if not spec.schedule.after_features:
        assert not isinstance(dag.timetable, AssetOrTimeSchedule)


def test_shipped_schedules_cover_cron_assets_and_both() -> None:
    kinds = {(bool(s.schedule.cron), s.schedule.after_features) for s in SPECS.values()}
    assert {(True, False), (False, True), (True, True)} <= kinds


def test_features_dag_publishes_the_features_asset() -> None:
    dag = build_features_dag()
    tasks = dag.task_dict
    assert set(tasks) == {"partition", "materialize_range", "materialize"}
    assert tasks["materialize_range"].is_mapped  # PostgreSQL: one task per customer-id range
    assert [a.uri for a in tasks["materialize"].outlets] == [FEATURES_ASSET.uri]
    assert not tasks["partition"].outlets and not tasks["materialize_range"].outlets
    assert isinstance(dag.timetable, CronTriggerTimetable)


# --- trigger form ---------------------------------------------------------------------------
def _validated(conf: dict) -> dict:
    params: ParamsDict = copy.deepcopy(build_campaign_dag(SPECS["birthday"]).params)
    params.update(conf)
    return params.validate()


def test_trigger_form_accepts_a_full_conf() -> None:
    conf = {
        "dry_run": True,
        "limit": 5,
        "as_of": "2026-11-24T09:00:00Z",
        "test_recipients": ["qa@lifecycle-demo.shop"],
    }
    assert _validated(conf) == conf
    options = trigger_options(conf, conf)
    assert options.as_of == datetime(2026, 11, 24, 9, tzinfo=UTC)
    assert options.test_recipients == ("qa@lifecycle-demo.shop",)


@pytest.mark.parametrize(
    ("conf", "named"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"as_of": "tomorrow"}, "as_of"),
        ({"dry_run": "yes"}, "dry_run"),
        ({"test_recipients": ["not-an-address"]}, "test_recipients"),
        ({"test_recipients": "qa@lifecycle-demo.shop"}, "test_recipients"),
    ],
)
def test_trigger_form_rejects_bad_values_naming_the_field(conf: dict, named: str) -> None:
    with pytest.raises(ParamValidationError, match=f"param {named}"):
        _validated(conf)


def test_no_trigger_option_is_marked_required_in_the_form(spec_and_dag) -> None:  # type: ignore[no-untyped-def]
    # Airflow's form marks a field required when its schema has a type without "null"
    # (isParamRequired.tsx in the 3.3 UI): every option here is optional.
    _, dag = spec_and_dag
    for name in dag.params:
        schema_type = dag.params.get_param(name).schema["type"]
        assert isinstance(schema_type, list) and "null" in schema_type, name
    conf = {name: None for name in TRIGGER_OPTIONS}  # an empty form is a valid, normal run
    assert trigger_options(_validated(conf), conf) == TriggerOptions()


def test_the_form_says_what_unpause_does(spec_and_dag) -> None:  # type: ignore[no-untyped-def]
    spec, dag = spec_and_dag
    text = dag.params.get_param("dry_run").schema["description_md"]
    assert "**Unpause**" in text and "makes the schedule live" in text
    shown = "This campaign is **live**" if spec.live else "This campaign is a **draft**"
    assert shown in text


def test_unknown_trigger_option_is_refused_not_ignored() -> None:
    """A typo must not turn a rehearsal into a real send."""
    with pytest.raises(TriggerOptionError, match=r"dryrun.*dry_run"):
        trigger_options({"dry_run": False}, {"dryrun": True})


def test_as_of_in_the_task_is_checked_again_with_a_readable_message() -> None:
    with pytest.raises(TriggerOptionError, match="2026-11-24T09:00:00Z"):
        trigger_options({"as_of": "24/11/2026"}, {})


# --- as-of resolution -----------------------------------------------------------------------
SCHEDULED = datetime(2026, 11, 24, 10, 20, tzinfo=UTC)


def test_as_of_from_the_form_wins() -> None:
    options = TriggerOptions(as_of=datetime(2026, 1, 2, tzinfo=UTC))
    events = [{"as_of": "2026-11-24T10:00:00+00:00"}]
    assert resolve_as_of(options, events, SCHEDULED) == options.as_of


def test_as_of_from_the_newest_features_snapshot() -> None:
    events = [
        {"as_of": "2026-11-24T08:00:00+00:00"},
        {"as_of": "2026-11-24T09:00:00+04:00"},
        {"row_count": 3},
    ]
    got = resolve_as_of(TriggerOptions(), events, SCHEDULED)
    assert got == datetime(2026, 11, 24, 8, tzinfo=UTC)


def test_as_of_defaults_to_the_scheduled_time() -> None:
    assert resolve_as_of(TriggerOptions(), [], SCHEDULED) == SCHEDULED


# --- connections ------------------------------------------------------------------------------
def test_warehouse_url_from_a_postgres_connection() -> None:
    conn = Connection(
        conn_id="lifecycle_warehouse",
        conn_type="postgres",
        host="db",
        port=5433,
        login="mkt",
        password="p@ss",
        schema="warehouse",
    )
    url = warehouse_url(conn)
    import sqlalchemy as sa

    parsed = sa.make_url(url)
    assert (parsed.drivername, parsed.host, parsed.port, parsed.database) == (
        "postgresql+psycopg",
        "db",
        5433,
        "warehouse",
    )
    assert parsed.password == "p@ss"


def test_warehouse_url_from_sqlite_uri_and_extra() -> None:
    conn = Connection.from_uri("sqlite:////data/wh.db", conn_id="lifecycle_warehouse")
    assert warehouse_url(conn) == "sqlite:////data/wh.db"
    conn = Connection(
        conn_id="lifecycle_warehouse",
        conn_type="generic",
        extra=json.dumps({"sqlalchemy_url": "mysql://x/y"}),
    )
    assert warehouse_url(conn) == "mysql://x/y"


def test_warehouse_connection_without_database_is_a_clear_error() -> None:
    conn = Connection(conn_id="lifecycle_warehouse", conn_type="http", host="")
    with pytest.raises(ValueError, match="lifecycle_warehouse"):
        warehouse_url(conn)


def test_the_sendgrid_connection_type_is_one_the_ui_knows() -> None:
    # The SendGrid provider registers no connection type (it is only an email backend) and the
    # HTTP provider is not installed: `generic` is Airflow's own, with host, login and password.
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    # What the UI's connection form offers (its /ui/connections/hook_meta endpoint).
    offered = {meta.connection_type for meta in HookMetaService.hook_meta_data()}
    assert SENDGRID_CONN_TYPE in offered
    assert "sendgrid" not in offered


# `sendgrid` is the type of connections made before: their key keeps working.
@pytest.mark.parametrize("conn_type", [SENDGRID_CONN_TYPE, "sendgrid"])
def test_runtime_settings_read_connections_and_keep_the_key_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path, conn_type: str
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_WAREHOUSE", f"sqlite:///{tmp_path / 'wh.db'}")
    monkeypatch.setenv(
        "AIRFLOW_CONN_SENDGRID_DEFAULT",
        json.dumps(
            {
                "conn_type": conn_type,
                "password": "SG.very-secret",
                "host": "127.0.0.1",
                "port": 8025,
                "schema": "http",
            }
        ),
    )
    settings = runtime_settings()
    assert settings.warehouse_url == f"sqlite:///{tmp_path / 'wh.db'}"
    assert settings.sendgrid_api_key == "SG.very-secret"
    assert settings.sendgrid_host == "http://127.0.0.1:8025"
    assert "SG.very-secret" not in repr(settings)


def test_runtime_settings_fall_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_LIFECYCLE_WAREHOUSE", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_SENDGRID_DEFAULT", raising=False)
    monkeypatch.setenv("LIFECYCLE_WAREHOUSE_URL", "sqlite:////elsewhere/wh.db")
    assert runtime_settings().warehouse_url == "sqlite:////elsewhere/wh.db"


def test_a_campaign_that_needs_approval_asks_between_plan_and_deliver() -> None:
    spec = SPECS["loyalty"].model_copy(
        update={"approval": Approval(approvers=["ops-lead"], expires_after_hours=6)}
    )
    dag = build_campaign_dag(spec)
    approve = dag.task_dict["approve"]
    assert isinstance(approve, ApprovalOperator)
    assert approve.upstream_task_ids == {"gather"}
    assert dag.task_dict["deliver"].upstream_task_ids == {"plan", "gather", "approve"}
    assert approve.assigned_users == [{"id": "ops-lead", "name": "ops-lead"}]
    assert approve.response_timeout == timedelta(hours=6)
    assert approve.defaults is None  # no answer is not an approval
    assert dag.task_dict["finalize"].trigger_rule == TriggerRule.ALL_DONE
    # A retry would ask again, erasing the answer given; the other tasks keep their retries.
    assert approve.retries == 0 and dag.task_dict["plan"].retries == 3


def test_deliver_runs_in_the_sendgrid_pool_and_every_task_has_a_timeout(spec_and_dag) -> None:  # type: ignore[no-untyped-def]
    spec, dag = spec_and_dag
    assert dag.task_dict["deliver"].pool == SENDGRID_POOL
    for task in dag.tasks:
        assert task.execution_timeout is not None, task.task_id
    # A full batch at the task's rate fits twice into its timeout.
    seconds = spec.delivery.batch_size / task_rate(spec, load_settings())
    assert dag.task_dict["deliver"].execution_timeout.total_seconds() >= 2 * seconds


def test_a_deadline_in_the_spec_is_an_airflow_deadline_alert_with_our_notifier() -> None:
    assert build_campaign_dag(SPECS["loyalty"]).deadline is None  # none unless the spec asks
    dag = build_campaign_dag(SPECS["loyalty"].model_copy(update={"deadline_hours": 3}))
    (alert,) = dag.deadline if isinstance(dag.deadline, list) else [dag.deadline]
    assert alert.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert alert.interval == timedelta(hours=3)
    assert alert.callback.path == "lifecycle.airflow.notifier.CampaignDeadlineNotifier"
    assert alert.callback.kwargs == {"campaign_id": "loyalty"}
