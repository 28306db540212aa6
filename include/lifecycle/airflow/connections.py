"""Settings for code running inside Airflow, read from Airflow connections.

`lifecycle_warehouse` names the warehouse: a postgres or sqlite connection, or any SQLAlchemy
URL in the extra field `sqlalchemy_url`. `sendgrid_default` (type `generic`) holds the API key in
its password field, as Airflow's SendGrid provider expects; an optional host points at another
API endpoint. Connections are read when a task runs or a request arrives, never while parsing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseHook, Connection
from airflow.sdk.exceptions import AirflowNotFoundException

from lifecycle.core.config import Settings, load_settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

WAREHOUSE_CONN_ID = "lifecycle_warehouse"
SENDGRID_CONN_ID = "sendgrid_default"
# The type to give `sendgrid_default`: Airflow's own generic type (host, login, password), as
# the SendGrid provider registers none. The key is read from the password whatever the type.
SENDGRID_CONN_TYPE = "generic"


def runtime_settings() -> Settings:
    """`LIFECYCLE_*` variables, overridden by the Airflow connections. Either connection may
    be absent; then the environment (or the embedded default) applies. The executor is
    Airflow's `[core] executor`, from airflow.cfg or the environment."""
    from airflow.sdk.configuration import conf

    overrides: dict[str, object] = {"executor": conf.get("core", "executor", fallback=None)}
    if (conn := _optional_connection(WAREHOUSE_CONN_ID)) is not None:
        overrides["warehouse_url"] = warehouse_url(conn)
    if (conn := _optional_connection(SENDGRID_CONN_ID)) is not None:
        if conn.password:
            overrides["sendgrid_api_key"] = conn.password
        if conn.host:
            overrides["sendgrid_host"] = sendgrid_host(conn)
    return load_settings(**overrides)


def _optional_connection(conn_id: str) -> Connection | None:
    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def warehouse_url(conn: Connection) -> str:
    """The SQLAlchemy URL of a `lifecycle_warehouse` connection."""
    from sqlalchemy.engine import URL

    if url := conn.extra_dejson.get("sqlalchemy_url"):
        return str(url)
    if conn.conn_type in ("postgres", "postgresql"):
        return URL.create(
            "postgresql+psycopg",
            username=conn.login or None,
            password=conn.password or None,
            host=conn.host or None,
            port=conn.port or None,
            database=conn.schema or None,
        ).render_as_string(hide_password=False)
    if conn.conn_type == "sqlite" and (conn.host or conn.schema):
        # The SQLite provider keeps the file path in host; the URI form puts it in schema.
        return f"sqlite:///{conn.host or conn.schema}"
    raise ValueError(
        f"connection {WAREHOUSE_CONN_ID!r} (type {conn.conn_type!r}) names no database: use a "
        "postgres connection, a sqlite one with the file path as host, "
        "or put a SQLAlchemy URL in its extra field 'sqlalchemy_url'"
    )


def sendgrid_host(conn: Connection) -> str:
    """The API base URL of a `sendgrid_default` connection that has a host."""
    host = (conn.host or "").rstrip("/")
    if "://" not in host:
        host = f"{conn.schema or 'https'}://{host}"
    return f"{host}:{conn.port}" if conn.port else host


def warehouse_engine(settings: Settings) -> Engine:
    """The warehouse engine for these settings. The warehouse module is imported on first use,
    so that parsing a DAG file does not load it."""
    from lifecycle.store import warehouse

    return warehouse.engine_for(settings.warehouse_url)
