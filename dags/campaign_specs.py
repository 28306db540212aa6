"""Invalid campaign specs, as this file's import error in the Airflow UI: one line per file,
naming the file and the field to fix.

`dags/campaigns.py` builds a DAG for every valid spec only, so the other campaigns keep their
schedules while one spec is broken; this file has no DAG for an import error to stop.
"""

from lifecycle.airflow.campaign_dag import check_campaign_specs
from lifecycle.core.config import load_settings

settings = load_settings()
check_campaign_specs(settings.campaigns_dir, settings.templates_dir)
