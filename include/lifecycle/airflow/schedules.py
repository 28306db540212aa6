"""When our DAGs run: the shared start date, the Assets that chain them, a campaign's schedule.

`customer_features` publishes FEATURES_ASSET each hour; a campaign scheduled `after_features`
runs on it, and every campaign run that succeeds publishes its own `campaign_asset`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable

from lifecycle.core.campaigns import CampaignSpec

START_DATE = pendulum.datetime(2026, 1, 1, tz="UTC")
FEATURES_CRON = "0 * * * *"
FEATURES_ASSET = Asset(name="customer_features", uri="lifecycle://customer_features")

CampaignSchedule = CronTriggerTimetable | AssetOrTimeSchedule | list[Asset] | None


def campaign_asset(campaign_id: str) -> Asset:
    return Asset(name=f"campaign_{campaign_id}", uri=f"lifecycle://campaigns/{campaign_id}")


def campaign_schedule(spec: CampaignSpec) -> CampaignSchedule:
    """The spec's cron (in its timezone), each fresh features snapshot, both, or neither
    (triggered by hand only)."""
    cron = (
        CronTriggerTimetable(spec.schedule.cron, timezone=spec.schedule.timezone)
        if spec.schedule.cron
        else None
    )
    if cron is not None and spec.schedule.after_features:
        return AssetOrTimeSchedule(timetable=cron, assets=[FEATURES_ASSET])
    if cron is not None:
        return cron
    if spec.schedule.after_features:
        return [FEATURES_ASSET]
    return None
