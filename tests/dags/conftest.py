"""An Airflow home for DAG tests: a temporary AIRFLOW_HOME with a migrated SQLite metadata DB.

Airflow reads its configuration when first imported, so the environment is set here, at
collection time, before any test module imports it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from lifecycle.core.config import PROJECT_ROOT

AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="lifecycle-airflow-"))
AIRFLOW_ENV = {
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
}
os.environ.update(AIRFLOW_ENV)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Migrate the metadata DB once per session; fail clearly if Airflow was configured
    before this conftest could point it at the temporary home."""
    from airflow import settings

    if str(AIRFLOW_HOME) not in str(settings.SQL_ALCHEMY_CONN):
        pytest.fail(
            f"airflow was imported before tests/dags/conftest.py: {settings.SQL_ALCHEMY_CONN}"
        )
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run(
        [str(airflow), "db", "migrate"],
        env={**os.environ, **AIRFLOW_ENV},
        check=True,
        capture_output=True,
        timeout=600,
    )
    return AIRFLOW_HOME
