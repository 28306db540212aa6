"""The emails of a planned run, rendered for the person who approves it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, Row

from lifecycle.core.campaigns import SpecError, load_campaigns
from lifecycle.core.config import Settings
from lifecycle.run.approval import sample_emails
from lifecycle.run.compose import Email
from lifecycle.store import runs

SHOWN = 5


def run_emails(engine: Engine, settings: Settings, run_id: int) -> tuple[Row[Any], list[Email]]:
    """The run and its first planned emails; `LookupError` if the run or its campaign is gone."""
    with engine.connect() as conn:
        run = runs.get_run(conn, run_id)
    try:
        spec = load_campaigns(settings.campaigns_dir).spec(run.campaign_id)
    except SpecError as exc:
        raise LookupError(str(exc)) from None
    if spec is None:
        raise LookupError(f"campaign {run.campaign_id} has no spec any more")
    return run, sample_emails(engine, spec, settings, run_id=run_id, limit=SHOWN)
