"""`[core] hostname_callable` for several Airflow processes on one machine: each reports the
name in its LIFECYCLE_HOSTNAME (a task instance's `hostname` then tells the Celery workers of
`make cluster` apart), else the machine's name as Airflow's default does."""

from __future__ import annotations

import os
import socket

CALLABLE = "lifecycle.devtools.hostname.hostname"
VARIABLE = "LIFECYCLE_HOSTNAME"


def hostname() -> str:
    return os.environ.get(VARIABLE) or socket.getfqdn()
