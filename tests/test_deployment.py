"""Outside the local default (real sending: SendGrid at a non-loopback host) every host must
share the unsubscribe secret and the webhook key and use the sender's own addresses:
preflight refuses to start without them, naming each one missing."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from lifecycle import cli
from lifecycle.core.campaigns import load_campaigns
from lifecycle.core.config import load_settings
from lifecycle.feedback import tokens
from lifecycle.run.preflight import PreflightError, deployment_gaps, preflight
from lifecycle.store import schema

AS_OF = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
DEPLOYED = {
    "LIFECYCLE_UNSUBSCRIBE_SECRET": "shared-by-every-host",
    "LIFECYCLE_SENDGRID_WEBHOOK_PUBLIC_KEY": "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE",
    "LIFECYCLE_SENDER_ADDRESS": "Real Shop, 5 Main St, Springfield 00000, US",
    "LIFECYCLE_UNSUBSCRIBE_MAILBOX": "unsubscribe@real-shop.example",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("LIFECYCLE_") or name == "SENDGRID_API_KEY":
            monkeypatch.delenv(name)
    monkeypatch.setenv("LIFECYCLE_HOME", str(tmp_path))


@pytest.mark.parametrize("missing", sorted(DEPLOYED))
def test_real_sending_without_a_shared_setting_fails_preflight_naming_it(
    engine: Engine,
    warehouse_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    missing: str,
) -> None:
    for name, value in DEPLOYED.items():
        if name != missing:
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.real-looking-key")  # api.sendgrid.com: never reached
    code = cli.main(
        ["--warehouse", warehouse_url, "run", "onboarding", "--as-of", AS_OF.isoformat()]
    )
    err = capsys.readouterr().err.splitlines()
    assert code == 1
    assert len(err) == 1, err
    assert err[0].startswith("onboarding: sending through SendGrid at https://api.sendgrid.com")
    assert missing in err[0]
    assert not [name for name in DEPLOYED if name != missing and name in err[0]]
    assert "SG.real-looking-key" not in err[0]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.send_ledger)).scalar_one() == 0


@pytest.mark.parametrize(
    ("host", "real"),
    [
        ("https://api.sendgrid.com", True),
        ("https://api.eu.sendgrid.com", True),
        ("http://10.0.0.7:8025", True),
        ("http://127.0.0.1:8025", False),
        ("http://localhost:8025", False),
        ("http://[::1]:8025", False),
    ],
)
def test_only_loopback_sinks_count_as_local(host: str, real: bool) -> None:
    settings = load_settings(sendgrid_api_key="SG.x", sendgrid_host=host)
    assert bool(deployment_gaps(settings)) is real
    assert deployment_gaps(load_settings(transport="outbox", sendgrid_host=host)) == []


def test_real_sending_with_every_shared_setting_passes_preflight(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in DEPLOYED.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(sendgrid_api_key="SG.x")
    spec = load_campaigns(settings.campaigns_dir).specs["onboarding"]
    preflight(engine, spec, settings, as_of=AS_OF)
    with pytest.raises(PreflightError, match="LIFECYCLE_SENDER_ADDRESS"):
        preflight(
            engine,
            spec,
            load_settings(
                sendgrid_api_key="SG.x",
                sender_address="Lifecycle Demo Shop, 1 Abovyan St, Yerevan 0001, Armenia",
            ),
            as_of=AS_OF,
        )


def test_the_generated_secret_says_it_is_local_only(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    token = tokens.sign(settings, "test", 7)
    text = (tmp_path / "unsubscribe.secret").read_text()
    assert text.startswith("# LOCAL ONLY") and "LIFECYCLE_TOKEN_SECRETS" in text
    assert tokens.load(settings, "test", token, 1) == (7,)  # the note is not the secret
    assert tokens.load(load_settings(home=tmp_path), "test", token, 1) == (7,)
    with pytest.raises(tokens.InvalidToken):
        tokens.load(load_settings(home=tmp_path, unsubscribe_secret="other"), "test", token, 1)
