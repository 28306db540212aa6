"""The Lifecycle Airflow plugin: our two web apps on the Airflow API server.

* /lifecycle — PUBLIC (no Airflow login): SendGrid's event webhook and the unsubscribe pages,
  each protected by its own signature or token.
* /campaigns — the leadership dashboard, behind Airflow's login, shown inside the Airflow UI
  as "Campaigns" in the navigation (an iframe at /plugin/campaigns).
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

from lifecycle.airflow.plugin import dashboard_app, public_app


class LifecyclePlugin(AirflowPlugin):
    name = "lifecycle"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": public_app(), "url_prefix": "/lifecycle", "name": "Lifecycle public"},
        {"app": dashboard_app(), "url_prefix": "/campaigns", "name": "Campaigns"},
    ]
    external_views: ClassVar[list[dict[str, Any]]] = [
        {
            "name": "Campaigns",
            "href": "campaigns/",
            "url_route": "campaigns",
            "destination": "nav",
            "nav_top_level": True,
        }
    ]
