"""Process checks shared by the tests that start Airflow: nothing may outlive them."""

from __future__ import annotations

import psutil


def still_running(processes: set[psutil.Process]) -> list[str]:
    """The processes of `processes` that are still alive (zombies excepted), for an assertion."""
    alive = []
    for proc in processes:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{proc.pid} {' '.join(proc.cmdline())[:80]}")
        except psutil.NoSuchProcess:
            continue
    return alive
