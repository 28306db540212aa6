"""The preference centre over real HTTP on both backends: topics as group suppressions, the
one-click POST on the email's own topic, "unsubscribe from all", the next run honouring the
choices, and the two-way sync with SendGrid's groups against the sink."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import Engine, insert, select

from lifecycle.core.campaigns import load_campaigns
from lifecycle.core.config import PROJECT_ROOT, Settings, load_settings
from lifecycle.core.preferences import Topics, load_topics
from lifecycle.devtools.sink.suppressions import SuppressionStore, register
from lifecycle.devtools.sink.thread import SinkHandle, run_sink_in_thread
from lifecycle.feedback import preferences, unsubscribe
from lifecycle.feedback import suppressions as suppression_list
from lifecycle.run.campaign import run_campaign
from lifecycle.run.deliver import deliver
from lifecycle.run.plan import plan
from lifecycle.store.schema import customers, resubscribes, send_ledger, suppressions
from lifecycle.web.public import standalone_app
from lifecycle.web.server import serve_in_thread

KEY = "SG.preferences-test-key"
AS_OF = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)  # 16:00 in Yerevan
EMAIL = "Ani@Example.am"
OFFERS, BIRTHDAY = 101, 102  # include/preferences.yaml


@pytest.fixture
def store() -> SuppressionStore:
    return SuppressionStore(groups={OFFERS: [], BIRTHDAY: [], 103: [], 104: []})


@pytest.fixture
def sink(store: SuppressionStore) -> Iterator[SinkHandle]:
    extension = functools.partial(register, store=store)
    with run_sink_in_thread(extensions=[extension], api_keys=[KEY], reset_after_s=0) as handle:
        yield handle


@pytest.fixture
def settings(warehouse_url: str, sink: SinkHandle, tmp_path: Path) -> Settings:
    """Two campaigns of the 'offers' topic (onboarding's welcome series, sent as offers)."""
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    spec = yaml.safe_load((PROJECT_ROOT / "include" / "campaigns" / "onboarding.yaml").read_text())
    for campaign_id in ("welcome", "welcome_again"):
        spec.update(id=campaign_id, delivery={**spec["delivery"], "asm_group_id": OFFERS})
        spec["policies"] = {**spec["policies"], "frequency_cap": None}
        (campaigns / f"{campaign_id}.yaml").write_text(yaml.safe_dump(spec))
    return load_settings(
        home=tmp_path,
        warehouse_url=warehouse_url,
        campaigns_dir=campaigns,
        transport="sendgrid",
        sendgrid_api_key=KEY,
        sendgrid_host=sink.url,
        unsubscribe_secret="preferences-test-secret",
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[httpx.Client]:
    with (
        serve_in_thread(standalone_app(settings)) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        yield http


def path_of(settings: Settings, engine: Engine, customer_id: int, campaign: str = "welcome") -> str:
    """The unsubscribe link of an email sent to EMAIL (a token names its ledger row)."""
    mine = (
        (send_ledger.c.campaign_id == campaign)
        & (send_ledger.c.customer_id == customer_id)
        & (send_ledger.c.occurrence_key == "link")
    )
    with engine.begin() as conn:
        send_id = conn.execute(select(send_ledger.c.id).where(mine)).scalar()
        if send_id is None:
            row = dict(campaign_id=campaign, occurrence_key="link", customer_id=customer_id)
            send_id = conn.execute(
                insert(send_ledger)
                .values(**row, run_id=1, status="sent", template=campaign, email=EMAIL)
                .values(locale="en", planned_at=datetime.now(UTC))
                .returning(send_ledger.c.id)
            ).scalar_one()
    token = unsubscribe.token_for(settings, send_id)
    return httpx.URL(unsubscribe.unsubscribe_url(settings, token)).path


def save_path(settings: Settings, engine: Engine, customer_id: int) -> str:
    return path_of(settings, engine, customer_id).replace("/unsubscribe/", "/preferences/")


def held(engine: Engine) -> list[tuple[str, str, str]]:
    query = select(suppressions.c.email, suppressions.c.scope, suppressions.c.source)
    with engine.connect() as conn:
        return sorted(tuple(row) for row in conn.execute(query))


def pending_lifts(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return sorted(
            tuple(r) for r in conn.execute(select(resubscribes.c.email, resubscribes.c.scope))
        )


def test_the_page_shows_the_topics_and_saves_choices_as_group_suppressions(
    client: httpx.Client, settings: Settings, engine: Engine
) -> None:
    page = client.get(path_of(settings, engine, 7))
    assert page.status_code == 200
    assert page.text.count('type="checkbox"') == 4 and page.text.count("checked") == 4
    assert "Offers and discounts" in page.text and "Loyalty programme news" in page.text

    form = {"topic": ["birthday", "feedback", "loyalty", "no-such-topic"], "action": "save"}
    saved = client.post(save_path(settings, engine, 7), data=form)
    assert saved.status_code == 200 and "Your choices are saved." in saved.text
    assert saved.text.count("checked") == 3
    assert held(engine) == [("ani@example.am", f"group:{OFFERS}", "link")]

    client.post(
        save_path(settings, engine, 7), data={"topic": ["offers", "birthday"], "action": "save"}
    )
    assert held(engine) == [
        ("ani@example.am", "group:103", "link"),
        ("ani@example.am", "group:104", "link"),
    ]
    assert pending_lifts(engine) == [("ani@example.am", f"group:{OFFERS}")]

    everything = client.post(save_path(settings, engine, 7), data={"action": "all"})
    assert "You will no longer receive any email from us." in everything.text
    assert 'type="checkbox"' not in everything.text
    assert ("ani@example.am", "global", "link") in held(engine)


def test_one_click_unsubscribes_from_the_emails_own_topic_only(
    client: httpx.Client, settings: Settings, engine: Engine
) -> None:
    response = client.post(
        path_of(settings, engine, 7),
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert "You will no longer receive: Offers and discounts." in response.text
    assert held(engine) == [("ani@example.am", f"group:{OFFERS}", "link")]


def test_a_tampered_token_changes_no_preference(
    client: httpx.Client, settings: Settings, engine: Engine
) -> None:
    bad = save_path(settings, engine, 7)[:-3] + "AAA"
    assert client.post(bad, data={"action": "all"}).status_code == 400
    assert client.post(bad, data={"action": "save"}).status_code == 400
    assert held(engine) == []


def add_customer(engine: Engine, customer_id: int, email: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(customers),
            {
                "id": customer_id,
                "email": email,
                "locale": "en",
                "timezone": "Asia/Yerevan",
                "signup_at": AS_OF - timedelta(hours=1),
                "marketing_consent": True,
            },
        )


def test_the_next_run_honours_the_choices(
    client: httpx.Client, settings: Settings, engine: Engine, sink: SinkHandle
) -> None:
    add_customer(engine, 7, EMAIL)
    add_customer(engine, 8, "bob@example.am")
    specs = load_campaigns(settings.campaigns_dir).specs
    client.post(save_path(settings, engine, 7), data={"topic": ["birthday"], "action": "save"})
    run_campaign(engine, specs["welcome"], settings, as_of=AS_OF)
    assert set(sink.state.recipients()) == {"bob@example.am"}

    client.post(save_path(settings, engine, 7), data={"topic": ["offers"], "action": "save"})
    run_campaign(engine, specs["welcome_again"], settings, as_of=AS_OF)
    assert sink.state.recipients() == {"bob@example.am": 2, EMAIL.lower(): 1}
    with engine.connect() as conn:
        statuses = conn.execute(
            select(send_ledger.c.campaign_id, send_ledger.c.status, send_ledger.c.reason)
            .where(send_ledger.c.customer_id == 7)
            .where(send_ledger.c.occurrence_key != "link")  # the email whose link was used
        ).all()
    assert sorted(tuple(s) for s in statuses) == [
        ("welcome", "skipped", "suppressed"),
        ("welcome_again", "sent", None),
    ]


def test_choices_sync_both_ways_with_sendgrids_groups(
    client: httpx.Client, settings: Settings, engine: Engine, store: SuppressionStore
) -> None:
    store.groups[BIRTHDAY].append("Someone@Example.com")
    store.groups[104].append("ani@example.am")
    client.post(
        save_path(settings, engine, 7), data={"topic": ["birthday", "feedback"], "action": "save"}
    )
    first = suppression_list.sync_with_settings(engine, settings, AS_OF)

    assert store.groups[OFFERS] == ["ani@example.am"]  # our choice reached SendGrid
    assert first.group_pushed == 2  # offers and loyalty (which SendGrid already had)
    assert ("someone@example.com", f"group:{BIRTHDAY}", "sync") in held(engine)

    # She ticks offers again here; Someone resubscribes to birthday on SendGrid's own page.
    client.post(
        save_path(settings, engine, 7),
        data={"topic": ["offers", "birthday", "feedback"], "action": "save"},
    )
    store.groups[BIRTHDAY].remove("Someone@Example.com")
    second = suppression_list.sync_with_settings(engine, settings, AS_OF)

    assert store.groups[OFFERS] == []
    assert second.lifted == 2 and pending_lifts(engine) == []
    assert held(engine) == [("ani@example.am", "group:104", "link")]
    third = suppression_list.sync_with_settings(engine, settings, AS_OF)
    assert (third.group_pushed, third.lifted, third.added) == (0, 0, 0)


def test_the_readme_sync_command_pushes_a_choice_to_sendgrid(
    settings: Settings, engine: Engine, store: SuppressionStore, warehouse_url: str, tmp_path: Path
) -> None:
    text = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Preference centre\n", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert commands == ["lifecycle suppressions sync\n"]
    example = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)[0]
    shipped = load_topics(settings.preferences_file).topics[0]
    assert Topics.model_validate(yaml.safe_load(example)).topics[0].group_id == shipped.group_id
    topics = load_topics(settings.preferences_file)
    preferences.save(engine, topics, EMAIL, {"birthday", "feedback", "loyalty"}, AS_OF)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "LIFECYCLE_HOME": str(tmp_path / "home"),
        "LIFECYCLE_WAREHOUSE_URL": warehouse_url,
        "SENDGRID_API_KEY": KEY,
        "LIFECYCLE_SENDGRID_HOST": settings.sendgrid_host,
    }
    done = subprocess.run(
        ["bash", "-c", commands[0]], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "1 topic unsubscribes" in done.stdout
    assert store.groups[OFFERS] == ["ani@example.am"]


def test_a_topic_unticked_after_planning_is_not_sent(
    settings: Settings, engine: Engine, sink: SinkHandle
) -> None:
    add_customer(engine, 7, EMAIL)
    add_customer(engine, 8, "bob@example.am")
    spec = load_campaigns(settings.campaigns_dir).specs["welcome"]
    planned = plan(engine, spec, settings, run_key="r1", as_of=AS_OF)
    topics = load_topics(settings.preferences_file)
    preferences.save(engine, topics, EMAIL, {"birthday"}, AS_OF)  # while delivery waits
    for batch in planned.batches:
        deliver(engine, spec, settings, run_id=planned.run_id, batch=batch, attempt="a")
    assert set(sink.state.recipients()) == {"bob@example.am"}
