"""A draft campaign (no `status: live` in its spec) never mails its audience: a real run ends
before planning with one line saying how to make it live; dry runs still work.

The DAG paths (triggered, scheduled, a deliver task after the spec became a draft) are in
tests/dags/test_campaign_dag_runs.py and tests/test_e2e_airflow.py.
"""

from __future__ import annotations

import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from lifecycle import cli
from lifecycle.core import features
from lifecycle.core.campaigns import load_campaigns, load_spec
from lifecycle.core.config import load_settings
from lifecycle.devtools import seed
from lifecycle.run.campaign import run_campaign
from lifecycle.run.draft import DraftCampaign
from lifecycle.store import schema

AS_OF = datetime(2026, 11, 24, 11, 0, tzinfo=UTC)


@pytest.fixture
def drafts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shipped specs with loyalty's `status: live` line removed: a draft by default."""
    for name in list(os.environ):
        if name.startswith("LIFECYCLE_") or name == "SENDGRID_API_KEY":
            monkeypatch.delenv(name)
    folder = tmp_path / "campaigns"
    shutil.copytree(load_settings().campaigns_dir, folder)
    loyalty = folder / "loyalty.yaml"
    text = loyalty.read_text(encoding="utf-8")
    loyalty.write_text(re.sub(r"(?m)^status: live.*\n", "", text), encoding="utf-8")
    monkeypatch.setenv("LIFECYCLE_CAMPAIGNS_DIR", str(folder))
    monkeypatch.setenv("LIFECYCLE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LIFECYCLE_TRANSPORT", "outbox")
    monkeypatch.setenv("LIFECYCLE_UNSUBSCRIBE_SECRET", "draft-test-secret")
    return folder


@pytest.fixture
def seeded(engine: Engine, warehouse_url: str) -> str:
    seed.seed(engine, 400, seed=11, as_of=AS_OF)
    features.materialize(engine, AS_OF, load_settings(warehouse_url=warehouse_url))
    return warehouse_url


def written(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        runs = conn.execute(sa.select(sa.func.count()).select_from(schema.campaign_runs))
        rows = conn.execute(sa.select(sa.func.count()).select_from(schema.send_ledger))
        return runs.scalar_one(), rows.scalar_one()


def test_a_spec_without_status_is_a_draft(drafts: Path) -> None:
    spec = load_spec(drafts / "loyalty.yaml")
    assert (spec.status, spec.live) == ("draft", False)
    assert load_spec(drafts / "birthday.yaml").live


def test_lifecycle_run_of_a_draft_is_one_line_and_writes_nothing(
    drafts: Path, seeded: str, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["--warehouse", seeded, "run", "loyalty", "--as-of", AS_OF.isoformat()])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.splitlines() == [
        "campaign loyalty is a draft, so nothing was planned or sent: to let it mail customers, "
        f"set `status: live` in {drafts / 'loyalty.yaml'} (drafts take dry runs and test sends)"
    ]
    assert out == ""
    assert written(engine) == (0, 0)
    assert not (drafts.parent / "home" / "outbox").exists()


def test_a_draft_takes_a_dry_run(
    drafts: Path, seeded: str, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--warehouse", seeded, "run", "loyalty", "--dry-run", "--as-of", AS_OF.isoformat()]
    assert cli.main(argv) == 0
    assert "dry run: nothing written or sent" in capsys.readouterr().out
    with engine.connect() as conn:
        dry = conn.execute(sa.select(schema.campaign_runs.c.dry_run)).scalars().all()
    assert dry == [True]
    assert written(engine)[1] == 0


def test_the_engine_refuses_a_real_run_of_a_draft_before_anything(
    drafts: Path, seeded: str, engine: Engine
) -> None:
    settings = load_settings(warehouse_url=seeded)
    spec = load_campaigns(drafts).specs["loyalty"]
    with pytest.raises(DraftCampaign, match="set `status: live` in"):
        run_campaign(engine, spec, settings, as_of=AS_OF)
    assert written(engine) == (0, 0)
    live = spec.model_copy(update={"status": "live"})
    assert run_campaign(engine, live, settings, as_of=AS_OF).outcome.counts["sent"] > 0
