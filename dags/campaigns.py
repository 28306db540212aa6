"""One Airflow DAG per campaign spec in include/campaigns/: `campaign_<id>`.

Each DAG runs preflight → plan → deliver (mapped over ledger batches) → finalize. Add a
campaign by adding a YAML spec (and its templates); no Python. An invalid spec has no DAG: it
shows up as the import error of `dags/campaign_specs.py` naming the file and the field to fix.
"""

from lifecycle.airflow.campaign_dag import build_campaign_dag
from lifecycle.core.campaigns import load_campaigns
from lifecycle.core.config import load_settings

settings = load_settings()
for spec in load_campaigns(settings.campaigns_dir, settings.templates_dir).specs.values():
    globals()[spec.dag_id] = build_campaign_dag(spec)
