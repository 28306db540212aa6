"""A cluster policy: the Celery queue of Lifecycle's tasks, chosen when task instances are
created, not when DAG files are parsed.

Airflow loads this module in every component through the `airflow.policy` entry point
(pyproject.toml), and calls `task_instance_mutation_hook` whenever it creates a task instance
(a new run, each mapped delivery batch, a cleared task). A task of a DAG tagged `lifecycle`
that sits on Airflow's default queue (`[operators] default_queue`) moves to:

1. the Airflow Variable `lifecycle_celery_queue`, if set (read from the metadata DB at most every
   `CACHE_SECONDS`), else
2. `LIFECYCLE_CELERY_QUEUE` in the environment of the component creating the task instance
   (the scheduler; the API server for a run triggered through it), else
3. nowhere: Airflow's default queue.

A task on any other queue (a spec's `queue`) stays there. The hook runs inside the scheduler's
transaction: it never commits or opens a session (it reads through the run's own), and never
raises, so a bad value is logged and ignored rather than stopping the scheduler.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from airflow import settings
from airflow.policies import hookimpl

from lifecycle.core.config import QUEUE_VARIABLE, check_queue

if TYPE_CHECKING:
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance

log = logging.getLogger(__name__)
AIRFLOW_VARIABLE = "lifecycle_celery_queue"
LIFECYCLE_TAG = "lifecycle"
CACHE_SECONDS = 30.0
_variable_cache: dict[str, tuple[float, str | None]] = {}

# Airflow 3.3 creates the task instances of a new run without calling the hook while
# `airflow.settings.task_instance_mutation_hook.is_noop` is set (DagRun._get_task_creator), and
# clears that flag only for an airflow_local_settings module (settings.import_local_settings),
# not for a policy loaded from an entry point, like this one: clear it ourselves.
settings.task_instance_mutation_hook.is_noop = False  # type: ignore[attr-defined]


@hookimpl
def task_instance_mutation_hook(task_instance: TaskInstance, dag_run: DagRun | None) -> None:
    task = task_instance.task
    if task is None or not _is_lifecycle(task) or task.queue != _airflow_default_queue():
        return
    try:
        queue = runtime_queue(dag_run)
    except Exception:  # never stop the scheduler over a placement preference
        log.exception("lifecycle: could not read the default queue; Airflow's default applies")
        return
    if queue is not None:
        task_instance.queue = queue


def runtime_queue(dag_run: DagRun | None) -> str | None:
    """The Variable's queue (when a run's session can read it), else the environment's, else
    None. An invalid name is logged and skipped."""
    for source, value in (
        (f"Variable {AIRFLOW_VARIABLE}", _variable(dag_run)),
        (QUEUE_VARIABLE, os.environ.get(QUEUE_VARIABLE)),
    ):
        if value is None or not value.strip():
            continue
        try:
            return check_queue(value.strip())
        except ValueError as exc:
            log.error("lifecycle: %s ignored: %s", source, exc)
    return None


def forget() -> None:
    """Drop the cached Variable, so that the next task instance reads it again (tests)."""
    _variable_cache.clear()


def _variable(dag_run: DagRun | None) -> str | None:
    """The Variable through the run's session, cached for `CACHE_SECONDS`; None without one."""
    from airflow.models.variable import Variable
    from sqlalchemy import select
    from sqlalchemy.orm import object_session

    cached = _variable_cache.get(AIRFLOW_VARIABLE)
    if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
        return cached[1]
    session = object_session(dag_run) if dag_run is not None else None
    if session is None:
        return None if cached is None else cached[1]
    with session.no_autoflush:  # half-built task instances must not be flushed from here
        row = session.scalar(select(Variable).where(Variable.key == AIRFLOW_VARIABLE).limit(1))
        value = None if row is None else row.val
        if row is not None:
            session.expunge(row)  # leave the scheduler's session as it was
    _variable_cache[AIRFLOW_VARIABLE] = (time.monotonic(), value)
    return value


def _is_lifecycle(task: Any) -> bool:
    dag = getattr(task, "dag", None)
    return LIFECYCLE_TAG in (getattr(dag, "tags", None) or ())


@functools.cache
def _airflow_default_queue() -> str:
    from airflow.configuration import conf

    return conf.get("operators", "default_queue")
