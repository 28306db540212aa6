"""Web apps served by the Airflow plugin: the public endpoints and the campaign dashboard."""
