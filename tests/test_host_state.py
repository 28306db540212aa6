"""No per-host state when tasks run on many hosts (any executor but a local one): a link secret
generated on one host, an SQLite warehouse file and outbox files outside a shared directory are
refused at preflight, in one line naming what to configure."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from lifecycle import cli
from lifecycle.core.campaigns import load_campaigns
from lifecycle.core.config import executor_classes, load_settings
from lifecycle.feedback import tokens
from lifecycle.run.preflight import host_state_gaps, preflight
from lifecycle.store import schema, warehouse

AS_OF = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("LIFECYCLE_") or name in ("SENDGRID_API_KEY", "AIRFLOW__CORE__EXECUTOR"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LIFECYCLE_HOME", str(tmp_path / "home"))


@pytest.mark.parametrize(
    ("executor", "many"),
    [
        (None, False),
        ("LocalExecutor", False),
        ("airflow.executors.local_executor.LocalExecutor", False),
        ("CeleryExecutor", True),
        ("KubernetesExecutor", True),
        ("LocalExecutor,CeleryExecutor", True),
        ("edge:airflow.providers.edge3.executors.EdgeExecutor", True),
        ("my_company.executors.InHouseExecutor", True),
    ],
)
def test_only_local_executors_keep_tasks_on_one_host(executor: str | None, many: bool) -> None:
    settings = load_settings(executor=executor)
    assert settings.runs_on_many_hosts is many
    assert bool(host_state_gaps(settings)) is many  # the embedded default has all three gaps


def test_the_executor_comes_from_airflows_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    assert load_settings().executor == "CeleryExecutor"
    assert executor_classes("a:x.y.KubernetesExecutor, CeleryExecutor") == [
        "KubernetesExecutor",
        "CeleryExecutor",
    ]


DISTRIBUTED = {
    "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
    "LIFECYCLE_UNSUBSCRIBE_SECRET": "shared-by-every-host",
    "LIFECYCLE_TRANSPORT": "outbox",
}
GAPS = {  # what is left out -> what the one line must name
    "secret": "LIFECYCLE_TOKEN_SECRETS or LIFECYCLE_UNSUBSCRIBE_SECRET",
    "shared_dir": "LIFECYCLE_SHARED_DIR",
    "warehouse": "lifecycle_warehouse to a PostgreSQL warehouse",
}


@pytest.mark.postgres
@pytest.mark.parametrize("left_out", sorted(GAPS))
def test_each_per_host_state_is_refused_at_preflight_in_one_line(
    pg_url: str,
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    left_out: str,
) -> None:
    for name, value in DISTRIBUTED.items():
        if not (left_out == "secret" and name == "LIFECYCLE_UNSUBSCRIBE_SECRET"):
            monkeypatch.setenv(name, value)
    if left_out != "shared_dir":
        monkeypatch.setenv("LIFECYCLE_SHARED_DIR", str(tmp_path / "shared"))
    url = sqlite_url if left_out == "warehouse" else pg_url

    code = cli.main(["--warehouse", url, "run", "onboarding", "--as-of", AS_OF.isoformat()])
    err = capsys.readouterr().err.splitlines()
    assert code == 1
    assert len(err) == 1, err
    assert err[0].startswith("onboarding: CeleryExecutor may run this campaign's tasks on")
    assert GAPS[left_out] in err[0]
    assert not [gap for other, gap in GAPS.items() if other != left_out and gap in err[0]]
    assert "shared-by-every-host" not in err[0]
    engine = warehouse.make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.send_ledger)).scalar_one() == 0
    engine.dispose()


@pytest.mark.postgres
def test_with_everything_shared_preflight_passes_and_the_outbox_is_shared(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in DISTRIBUTED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LIFECYCLE_SHARED_DIR", str(tmp_path / "shared"))
    settings = load_settings(warehouse_url=pg_url)
    spec = load_campaigns(settings.campaigns_dir).specs["onboarding"]
    engine = warehouse.make_engine(pg_url)
    preflight(engine, spec, settings, as_of=AS_OF)
    engine.dispose()
    assert settings.outbox_dir == tmp_path / "shared" / "outbox"
    assert settings.exports_dir == tmp_path / "shared" / "privacy_exports"
    # SendGrid instead of the outbox: no shared directory needed.
    sending = load_settings(
        warehouse_url=pg_url, shared_dir=None, transport=None, sendgrid_api_key="SG.x"
    )
    assert host_state_gaps(sending) == []


def test_on_one_host_nothing_is_required(engine: Engine, tmp_path: Path) -> None:
    settings = load_settings(executor="LocalExecutor", warehouse_url=str(engine.url))
    spec = load_campaigns(settings.campaigns_dir).specs["onboarding"]
    preflight(engine, spec, settings, as_of=AS_OF)
    assert settings.outbox_dir == tmp_path / "home" / "outbox"


def test_no_secret_is_generated_when_tasks_run_on_many_hosts(tmp_path: Path) -> None:
    settings = load_settings(executor="CeleryExecutor")
    with pytest.raises(tokens.NoSharedSecret, match="LIFECYCLE_TOKEN_SECRETS or LIFECYC"):
        tokens.sign(settings, "test", 7)
    assert not (tmp_path / "home" / tokens.GENERATED_SECRET_FILE).exists()
    shared = load_settings(executor="CeleryExecutor", unsubscribe_secret="shared")
    assert tokens.load(shared, "test", tokens.sign(shared, "test", 7), 1) == (7,)


def test_serve_public_refuses_to_start_without_a_shared_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    started: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.append(app))
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    assert cli.main(["serve-public"]) == 1
    assert started == []
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("set LIFECYCLE_TOKEN_SECRETS or LIFECYCLE_UNSUBSCRIBE_SECRET on every")
    monkeypatch.setenv("LIFECYCLE_UNSUBSCRIBE_SECRET", "shared")
    assert cli.main(["serve-public"]) == 0
    assert len(started) == 1
