"""Which Celery queue a campaign's tasks go to: the spec's `queue`, else the deployment's default
chosen when task instances are created (the cluster policy in lifecycle/airflow/policy.py).

The policy is checked as Airflow loads and calls it: through the `airflow.policy` entry point and
`airflow.settings.task_instance_mutation_hook`, in real `dag.test()` runs that create every task
instance, mapped delivery batches included, in the metadata DB.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow.sdk import DAG, dag, task
from test_campaign_dag_runs import AS_OF, SPECS, World, make_world

from lifecycle.airflow import policy
from lifecycle.airflow.campaign_dag import build_campaign_dag
from lifecycle.core import features
from lifecycle.core.campaigns import SpecError, load_spec
from lifecycle.core.config import QUEUE_VARIABLE, load_settings

CAMPAIGN = "loyalty"  # a live campaign the seeded world gives an audience at AS_OF


@pytest.fixture
def world(
    airflow_db: Path, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    with make_world(sqlite_url, tmp_path, monkeypatch) as made:
        features.materialize(made.engine, AS_OF, load_settings(warehouse_url=sqlite_url))
        yield made


@pytest.fixture(autouse=True)
def no_default_queue(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(QUEUE_VARIABLE, raising=False)
    policy.forget()
    yield
    policy.forget()


def queues(dag_id: str, run_id: str) -> dict[tuple[str, int], str]:
    """Every task instance of the run, by (task id, map index), and its queue."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=run_id)
        return {(ti.task_id, ti.map_index): ti.queue for ti in rows}


def run_campaign(dag_: DAG) -> dict[tuple[str, int], str]:
    run = dag_.test(run_conf={"as_of": AS_OF.isoformat()})
    assert str(run.state) == "success"
    placed = queues(dag_.dag_id, run.run_id)
    batches = [index for task_id, index in placed if task_id == "deliver"]
    assert batches and min(batches) >= 0, "the run must map deliver over batches"
    return placed


def test_airflow_loads_the_policy_from_the_entry_point() -> None:
    from airflow import settings

    (entry,) = [
        e for e in importlib.metadata.entry_points(group="airflow.policy") if e.name == "lifecycle"
    ]
    assert entry.load() is policy
    hooks = settings.get_policy_plugin_manager().hook.task_instance_mutation_hook
    assert policy in [impl.plugin for impl in hooks.get_hookimpls()]
    # Else Airflow creates a new run's task instances without calling any hook.
    assert settings.task_instance_mutation_hook.is_noop is False


def test_the_default_queue_is_read_when_task_instances_are_created(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = SPECS[CAMPAIGN]
    dag_ = build_campaign_dag(spec)  # parsed before the queue is chosen
    assert {t.queue for t in dag_.tasks} == {"default"}
    monkeypatch.setenv(QUEUE_VARIABLE, "lifecycle_env")
    placed = run_campaign(dag_)
    assert set(placed.values()) == {"lifecycle_env"}, placed


def test_the_airflow_variable_beats_the_environment(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.models.variable import Variable

    monkeypatch.setenv(QUEUE_VARIABLE, "lifecycle_env")
    Variable.set(policy.AIRFLOW_VARIABLE, "lifecycle_variable")
    try:
        placed = run_campaign(build_campaign_dag(SPECS[CAMPAIGN]))
    finally:
        Variable.delete(policy.AIRFLOW_VARIABLE)
    assert set(placed.values()) == {"lifecycle_variable"}, placed


def scheduler_task(dag_: object, task_id: str):  # type: ignore[no-untyped-def]
    """The task as the scheduler holds it: deserialized from the serialized DAG."""
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.from_dict(DagSerialization.to_dict(dag_)).get_task(task_id)


def new_instance(dag_: object, task_id: str) -> str:
    """The queue of a task instance built the way the scheduler builds one (the constructor
    calls `airflow.settings.task_instance_mutation_hook`); a mapped task's first instance."""
    from airflow.models.taskinstance import TaskInstance

    task_ = scheduler_task(dag_, task_id)
    index = 0 if task_.is_mapped else -1
    return str(TaskInstance(task_, None, run_id="r", map_index=index).queue)


def test_only_lifecycle_tasks_on_the_default_queue_move(monkeypatch: pytest.MonkeyPatch) -> None:
    @dag(dag_id="someone_elses", tags=["etl"])
    def someone_elses() -> None:
        @task
        def work() -> None: ...

        work()

    monkeypatch.setenv(QUEUE_VARIABLE, "lifecycle_env")
    campaign = build_campaign_dag(SPECS[CAMPAIGN])
    assert new_instance(campaign, "plan") == new_instance(campaign, "deliver") == "lifecycle_env"
    assert new_instance(someone_elses(), "work") == "default"
    bulk = build_campaign_dag(SPECS[CAMPAIGN].model_copy(update={"queue": "bulk"}))
    assert new_instance(bulk, "plan") == new_instance(bulk, "deliver") == "bulk"


def test_a_bad_default_queue_is_logged_and_ignored(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(QUEUE_VARIABLE, "no spaces, please")
    with caplog.at_level(logging.ERROR, logger=policy.__name__):
        assert new_instance(build_campaign_dag(SPECS[CAMPAIGN]), "plan") == "default"
    assert f"{QUEUE_VARIABLE} ignored: 'no spaces, please' is not a Celery queue name" in (
        caplog.text
    )


def test_a_spec_queue_goes_to_every_task_and_is_validated(tmp_path: Path) -> None:
    spec = SPECS["birthday"]
    dag_ = build_campaign_dag(spec.model_copy(update={"queue": "bulk"}))
    assert {t.task_id: t.queue for t in dag_.tasks} == {t.task_id: "bulk" for t in dag_.tasks}

    source = spec.source_path
    assert source is not None
    for bad in ("bulk mail", "", "a,b", "-x", "x" * 201):
        path = tmp_path / "birthday.yaml"
        path.write_text(source.read_text() + f"\nqueue: {bad!r}\n")
        with pytest.raises(SpecError, match=r"field 'queue': .* is not a Celery queue name"):
            load_spec(path)
    path.write_text(source.read_text() + "\nqueue: bulk.eu-1\n")
    assert load_spec(path).queue == "bulk.eu-1"
