"""A warehouse with campaign results for the dashboard tests: seeded customers and orders,
campaign runs with ledger rows (sent, holdout, skipped, failed) and simulated events.

The figures the tests expect are read back from these tables with plain SQL in the tests
(`expected_figures`), never from the reporting code.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import Engine, func, insert, select

from lifecycle.devtools import seed, simulate
from lifecycle.store import schema

CAMPAIGNS = ("onboarding", "birthday", "reengagement")


def fill_campaign_results(engine: Engine, as_of: datetime, customers: int = 3_000) -> None:
    seed.seed(engine, customers, seed=5, as_of=as_of)
    rng = np.random.default_rng(11)
    runs, ledger = [], []
    for c, campaign in enumerate(CAMPAIGNS):
        for r, days_ago in enumerate((12, 5)):
            run_id = 1 + 2 * c + r
            started = as_of - timedelta(days=days_ago, hours=c)
            runs.append(
                {
                    "id": run_id,
                    "campaign_id": campaign,
                    "run_key": f"scheduled__{started:%Y-%m-%dT%H:%M:%S}",
                    "as_of": started,
                    "dry_run": False,
                    "status": "success",
                    "started_at": started,
                    "finished_at": started + timedelta(minutes=20),
                }
            )
            audience = rng.choice(np.arange(1, customers + 1), size=300, replace=False)
            outcome = rng.choice(
                ["sent", "holdout", "no_consent", "failed"], size=300, p=[0.8, 0.1, 0.07, 0.03]
            )
            for customer_id, status in zip(audience.tolist(), outcome.tolist(), strict=True):
                row = {
                    "run_id": run_id,
                    "campaign_id": campaign,
                    "occurrence_key": f"run{run_id}",
                    "customer_id": customer_id,
                    "status": status,
                    "reason": None,
                    "template": campaign,
                    "email": f"c{customer_id}@example.com",
                    "planned_at": started,
                    "sent_at": None,
                    "message_id": None,
                }
                if status == "sent":
                    row |= {
                        "sent_at": started + timedelta(minutes=5),
                        "message_id": f"m{len(ledger)}",
                    }
                elif status == "failed":
                    row["reason"] = "rejected"
                else:
                    row |= {"status": "skipped", "reason": status}
                ledger.append(row)
    runs.append(runs[0] | {"id": 99, "run_key": "manual__dry", "dry_run": True})
    with engine.begin() as conn:
        conn.execute(insert(schema.campaign_runs), runs)
        conn.execute(insert(schema.send_ledger), ledger)
    simulate.simulate_events(engine, as_of=as_of, seed=2)


def expected_figures(engine: Engine) -> dict[str, int]:
    """Sent emails and distinct sends with each event, overall and per campaign, and emails
    waiting for the send window, by plain SQL."""
    ledger, events, runs = schema.send_ledger, schema.engagement_events, schema.campaign_runs
    real = ledger.c.run_id.in_(select(runs.c.id).where(~runs.c.dry_run))
    figures: dict[str, int] = {}
    with engine.connect() as conn:
        sent = select(ledger.c.campaign_id, func.count()).where(real, ledger.c.status == "sent")
        for campaign, n in conn.execute(sent.group_by(ledger.c.campaign_id)):
            figures[f"{campaign}.sent"] = n
        for event, step in (("delivered", "delivered"), ("open", "opened"), ("click", "clicked")):
            per_campaign = (
                select(ledger.c.campaign_id, func.count(func.distinct(events.c.send_id)))
                .select_from(events.join(ledger, ledger.c.id == events.c.send_id))
                .where(real, events.c.event == event)
                .group_by(ledger.c.campaign_id)
            )
            for campaign, n in conn.execute(per_campaign):
                figures[f"{campaign}.{step}"] = n
        waiting = select(func.count()).where(real, ledger.c.status == "planned")
        figures["waiting"] = conn.execute(waiting).scalar_one()
    campaigns = {key.split(".")[0] for key in figures if "." in key}
    for step in ("sent", "delivered", "opened", "clicked"):
        figures[step] = sum(figures.get(f"{c}.{step}", 0) for c in campaigns)
    return figures
