"""Pure FastAPI apps: the public endpoints (webhook, unsubscribe) and the campaign dashboard.

They import no Airflow. Whoever mounts one gives it its settings and its authentication: the
Airflow plugin (`lifecycle.airflow.plugin`), `lifecycle serve-public`, uvicorn, or a test.
"""
