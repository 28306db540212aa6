"""Scratch warehouses for benchmarks: a temporary SQLite file or a new PostgreSQL database."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get(
    "LIFECYCLE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@contextmanager
def sqlite_warehouse(prefix: str = "bench_") -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        yield f"sqlite:///{Path(folder) / 'warehouse.db'}"


@contextmanager
def postgres_warehouse(prefix: str = "bench_") -> Iterator[str]:
    """A new database on the test server, dropped afterwards."""
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
