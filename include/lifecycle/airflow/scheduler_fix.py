"""A backported Airflow scheduler fix: a task resumed right after it parked or deferred is not
failed by the stale report of the worker that parked it.

The bug (Airflow 3.3.2): a human-in-the-loop task (our approval step) parks in AWAITING_INPUT and
its worker exits; a deferring task does the same. The executor then reports SUCCESS for that try.
When the answer comes before the scheduler has read that report, the task is resumed (same try
number), queued again, and the scheduler takes the old report for the resumed attempt's: it logs
"Executor ... reported that the task instance ... finished with state success, but the task
instance's state attribute is queued" and fails the task, or retries it, and a retried approval
asks its approver again. Airflow 3.3.2 ignores the stale report only while the resumed task is
still SCHEDULED; upstream fixed QUEUED after 3.3.2 (apache/airflow#67287, #68741) and has RUNNING
open (#72716). The window is from the task parking to the scheduler's next read of executor
events: a second on an idle machine, more under load. tests/test_approval_airflow.py met both:
an approval failed while queued again (the CI hang: retried, asked again) and while running.

The fix: before the scheduler processes executor events, drop a SUCCESS report whose task instance
is QUEUED or RUNNING again for the same try with a method to resume (`next_method`). Only a
resumed task has one; a task really killed while queued or running is still caught by Airflow's
stuck-in-queued and heartbeat timeouts.

`install()` runs in every Airflow process (plugins/airflow_local_settings.py) but only patches
when the scheduler module is imported, so task and DAG-parsing processes import nothing more.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import logging
import sys
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

TARGET = "airflow.jobs.scheduler_job_runner"
FIXED_VERSIONS = ("3.3.",)  # checked against this code; a new series must be checked again
RESUMED_STATES = frozenset({"queued", "running"})  # "scheduled" Airflow handles itself
PARAMETERS = ["cls", "executor", "job_id", "scheduler_dag_bag", "session"]
_PATCHED = "_lifecycle_drops_stale_successes"


def install() -> None:
    """Patch the scheduler now if it is loaded, else as soon as it is imported."""
    if TARGET in sys.modules:
        patch(sys.modules[TARGET])
    elif not any(isinstance(finder, _PatchOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


def patch(module: ModuleType) -> bool:
    """Wrap `SchedulerJobRunner.process_executor_events`; False (and a warning) when this Airflow
    is not the one the fix was written for."""
    from airflow import __version__

    runner = module.SchedulerJobRunner
    original = runner.__dict__["process_executor_events"].__func__
    if getattr(original, _PATCHED, False):
        return True
    if not __version__.startswith(FIXED_VERSIONS) or _parameters(original) != PARAMETERS:
        log.warning(
            "lifecycle: not patching Airflow %s's scheduler (written for %s): check whether it "
            "still fails tasks resumed right after parking (apache/airflow#67287)",
            __version__,
            ", ".join(f"{v}x" for v in FIXED_VERSIONS),
        )
        return False

    @functools.wraps(original)
    def process_executor_events(
        cls: type, executor: Any, job_id: int | None, scheduler_dag_bag: Any, session: Any
    ) -> int:
        drop_stale_successes(executor, session)
        return int(
            original(
                cls,
                executor=executor,
                job_id=job_id,
                scheduler_dag_bag=scheduler_dag_bag,
                session=session,
            )
        )

    setattr(process_executor_events, _PATCHED, True)
    runner.process_executor_events = classmethod(process_executor_events)
    log.info("lifecycle: scheduler ignores stale executor successes of resumed tasks")
    return True


def drop_stale_successes(executor: Any, session: Any) -> list[Any]:
    """Remove the stale SUCCESS reports from the executor's event buffer; return their keys."""
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.models.taskinstancekey import TaskInstanceKey
    from sqlalchemy import select

    dropped = []
    for key, (state, _info) in list(executor.event_buffer.items()):
        if not isinstance(key, TaskInstanceKey) or state != "success":
            continue
        row = session.execute(
            select(TI.state, TI.try_number, TI.next_method).where(
                TI.dag_id == key.dag_id,
                TI.task_id == key.task_id,
                TI.run_id == key.run_id,
                TI.map_index == key.map_index,
            )
        ).first()
        if row is not None and is_stale_success(
            state, key.try_number, row.state, row.try_number, row.next_method
        ):
            del executor.event_buffer[key]
            dropped.append(key)
            log.warning(
                "lifecycle: ignored the executor's success report for %s: it is the worker that "
                "parked or deferred try %d; the task has resumed and is %s (apache/airflow#67287)",
                key,
                key.try_number,
                row.state,
            )
    return dropped


def is_stale_success(
    event_state: str, event_try: int, ti_state: str | None, ti_try: int, next_method: str | None
) -> bool:
    """A SUCCESS report for the try a task instance is resuming, queued or running again."""
    return (
        event_state == "success"
        and event_try == ti_try
        and ti_state in RESUMED_STATES
        and next_method is not None
    )


def _parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of the scheduler module so it is patched once run."""

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)  # one module, once; and find_spec below must not find us
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader)
        return spec


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        patch(module)

    def __getattr__(self, name: str) -> Any:  # get_source etc., for tracebacks
        return getattr(self.inner, name)
