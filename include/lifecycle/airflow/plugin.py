"""The two web apps our Airflow plugin mounts on the Airflow API server.

The apps themselves (`lifecycle.web`) know nothing of Airflow: here they get their settings
from the Airflow connections and, for the dashboard, Airflow's login.
"""

from __future__ import annotations

from airflow.api_fastapi.core_api.security import requires_authenticated
from fastapi import Depends, FastAPI

from lifecycle.airflow.connections import runtime_settings
from lifecycle.web import dashboard, public


def public_app() -> FastAPI:
    """SendGrid's event webhook and the unsubscribe pages: no Airflow login (each route checks
    its own signature or token); the connections are read at the first request."""
    return public.create_app(runtime_settings)


def dashboard_app() -> FastAPI:
    """The Campaigns dashboard, behind Airflow's login (the UI's cookie or a Bearer token);
    the connections are read at each request."""
    return dashboard.create_app(runtime_settings, dependencies=[Depends(requires_authenticated())])
