"""Task errors of the known classes as one line and a hint in the task log, worded as the
`lifecycle` command words them, instead of a driver's hundred-line traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from lifecycle.airflow.connections import runtime_settings
from lifecycle.core.config import Settings, load_settings
from lifecycle.run import problems

P = ParamSpec("P")
R = TypeVar("R")


def explained(function: Callable[P, R]) -> Callable[P, R]:
    """Wrap a task's function (below `@task`): a known problem a retry cannot fix (a bad
    warehouse URL, a missing table, a broken template, a refused key) fails the task at once
    with its line; one a retry may fix (the warehouse unreachable, a dropped connection) is
    retried with its line. Any other error keeps its traceback."""

    @functools.wraps(function)
    def task_function(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except AirflowException:
            raise
        except Exception as error:
            settings = _settings()
            problem = problems.known_problem(error, settings.warehouse_url)
            if problem is None:
                raise
            line = problems.redact(problem.one_line(), settings)
            if problem.retryable:
                raise AirflowException(line) from None
            raise AirflowFailException(line) from None

    return task_function


def _settings() -> Settings:
    try:
        return runtime_settings()
    except Exception:  # the connection itself is the problem: the environment's settings
        return load_settings()
