"""Airflow's local settings hook: every Airflow process imports this module at start (the plugins
folder is on its path), before the scheduler's own modules.

It installs lifecycle.airflow.scheduler_fix, which keeps Airflow 3.3's scheduler from failing a
task resumed right after it parked: an approval answered within a second or two of being asked.
It exports no settings (`__all__` is empty), so Airflow's own stay as configured.
"""

from __future__ import annotations

from lifecycle.airflow import scheduler_fix

__all__: list[str] = []

scheduler_fix.install()
