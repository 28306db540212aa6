"""Unsubscribe pages over real HTTP: preferences (GET), perform (POST), one-click, bad tokens;
and (slow) the public endpoints served by our plugin on a real `airflow standalone`."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, func, insert, select

from lifecycle.core.config import Settings, load_settings
from lifecycle.devtools.standalone import start_standalone
from lifecycle.feedback import events, surveys, unsubscribe
from lifecycle.store import warehouse
from lifecycle.store.schema import engagement_events, send_ledger, suppressions, survey_responses
from lifecycle.web.public import standalone_app
from lifecycle.web.server import serve_in_thread

EMAIL = "Ani.Petrosyan@Example.am"


@pytest.fixture
def settings(warehouse_url: str, tmp_path: Path) -> Settings:
    return load_settings(
        home=tmp_path, warehouse_url=warehouse_url, unsubscribe_secret="test-secret-0123456789"
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[httpx.Client]:
    """The standalone app: same paths as in the email links (/lifecycle/unsubscribe/...)."""
    with (
        serve_in_thread(standalone_app(settings)) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        yield http


def path_of(settings: Settings, token: str) -> str:
    return httpx.URL(unsubscribe.unsubscribe_url(settings, token)).path


def strings(settings: Settings, locale: str) -> dict[str, str]:
    path = settings.templates_dir / "_pages" / "preferences" / f"{locale}.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rows(engine: Engine) -> list[tuple[str, str, str, str]]:
    with engine.connect() as conn:
        result = conn.execute(
            select(suppressions.c.email, suppressions.c.scope, suppressions.c.reason,
                   suppressions.c.source)
        )  # fmt: skip
        return [tuple(r) for r in result]


def add_ledger_row(
    engine: Engine, customer_id: int, locale: str | None = "en", campaign: str = "birthday"
) -> int:
    """A sent email; returns its send_id (what its unsubscribe token names)."""
    with engine.begin() as conn:
        return conn.execute(
            insert(send_ledger)
            .values(
                campaign_id=campaign,
                occurrence_key="2026",
                customer_id=customer_id,
                run_id=1,
                status="sent",
                template=campaign,
                email=EMAIL,
                locale=locale,
                planned_at=datetime.now(UTC),
            )
            .returning(send_ledger.c.id)
        ).scalar_one()


def token_of(settings: Settings, engine: Engine, customer_id: int, **row: str | None) -> str:
    return unsubscribe.token_for(settings, add_ledger_row(engine, customer_id, **row))


def test_get_shows_confirmation_and_changes_nothing(
    client: httpx.Client, settings: Settings, engine: Engine
) -> None:
    token = token_of(settings, engine, 17)
    response = client.get(path_of(settings, token))

    assert response.status_code == 200
    assert strings(settings, "en")["heading"] in response.text
    assert f'<form method="post" action="../preferences/{token}">' in response.text
    assert EMAIL.lower() not in response.text  # masked: a forwarded link reveals little
    assert rows(engine) == []


def test_post_unsubscribes_from_the_emails_topic_once(
    client: httpx.Client, settings: Settings, engine: Engine
) -> None:
    """The shipped birthday campaign is the preference centre's "birthday" topic (SendGrid
    group 102): its link stops that topic, not every email."""
    path = path_of(settings, token_of(settings, engine, 17))
    first, second = client.post(path), client.post(path)

    assert first.status_code == second.status_code == 200
    done = strings(settings, "en")["done_topic"].format(topic="Birthday wishes and gifts")
    assert done in first.text
    assert rows(engine) == [(EMAIL.lower(), "group:102", "group_unsubscribe", "link")]


def test_post_for_a_campaign_without_a_topic_unsubscribes_from_all(
    client: httpx.Client, settings: Settings, engine: Engine
) -> None:
    path = path_of(settings, token_of(settings, engine, 17, campaign="no_such_campaign"))
    response = client.post(path)

    assert response.status_code == 200
    assert strings(settings, "en")["done_all"] in response.text
    assert rows(engine) == [(EMAIL.lower(), "global", "unsubscribe", "link")]


def test_one_click_post_works_without_the_page(
    client: httpx.Client, settings: Settings, engine: Engine
) -> None:
    path = path_of(settings, token_of(settings, engine, 5, campaign="feedback"))
    response = client.post(
        path,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert rows(engine) == [(EMAIL.lower(), "group:103", "group_unsubscribe", "link")]


@pytest.mark.parametrize("locale", ["hy-AM", "ka", "en_GB"])
def test_page_speaks_the_customers_language(
    client: httpx.Client, settings: Settings, engine: Engine, locale: str
) -> None:
    language = locale[:2]
    path = path_of(settings, token_of(settings, engine, 23, locale=locale))

    page, done = client.get(path), client.post(path)
    assert f'<html lang="{language}">' in page.text
    assert strings(settings, language)["heading"] in page.text
    done_text = strings(settings, language)["done_topic"].split("{topic}")[0]
    assert done_text in done.text


def test_unknown_locale_falls_back_to_english(
    client: httpx.Client, settings: Settings, engine: Engine
) -> None:
    path = path_of(settings, token_of(settings, engine, 24, locale="fr-FR"))
    assert '<html lang="en">' in client.get(path).text


def tampered(token: str) -> str:
    payload, signature = token.split(".")
    flipped = "A" if signature[0] != "A" else "B"
    return f"{payload}.{flipped}{signature[1:]}"


def other_payload(token: str, victims: str) -> str:
    """Our signature on the payload of a token naming someone else."""
    return f"{victims.split('.')[0]}.{token.split('.')[1]}"


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize(
    "kind", ["tampered", "foreign", "swapped-payload", "malformed", "unknown-send"]
)
def test_bad_tokens_get_400_and_change_nothing(
    client: httpx.Client, settings: Settings, engine: Engine, method: str, kind: str
) -> None:
    send_id = add_ledger_row(engine, 17)
    token = unsubscribe.token_for(settings, send_id)
    victims = unsubscribe.token_for(settings, add_ledger_row(engine, 18, campaign="loyalty"))
    foreign = replace(settings, unsubscribe_secret=None, token_secrets=("another-secret",))
    bad = {
        "tampered": tampered(token),
        "foreign": unsubscribe.token_for(foreign, send_id),
        "swapped-payload": other_payload(token, victims),
        "malformed": "not-a-token",
        "unknown-send": unsubscribe.token_for(settings, 10_000),
    }[kind]
    response = client.request(method, path_of(settings, bad))

    assert response.status_code == 400
    assert strings(settings, "en")["invalid_heading"] in response.text
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(suppressions)).scalar_one() == 0


@pytest.mark.slow
def test_public_endpoints_in_airflow_need_no_login_and_use_the_connection(
    tmp_path: Path,
) -> None:
    """Our plugin on a real `airflow standalone`: webhook and unsubscribe answer without an
    Airflow login and write to the warehouse of the `lifecycle_warehouse` connection."""
    database = tmp_path / "connection-warehouse.db"
    engine = warehouse.make_engine(f"sqlite:///{database}")
    warehouse.upgrade(engine)
    key = ec.generate_private_key(ec.SECP256R1())
    public_key = base64.b64encode(
        key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = load_settings(home=tmp_path, unsubscribe_secret="e2e-secret-0123456789")
    env = {
        "LIFECYCLE_HOME": str(tmp_path / "lifecycle"),
        "LIFECYCLE_WAREHOUSE_URL": f"sqlite:///{tmp_path / 'not-this-one.db'}",
        "AIRFLOW_CONN_LIFECYCLE_WAREHOUSE": json.dumps(
            {"conn_type": "sqlite", "host": str(database)}
        ),
        "LIFECYCLE_UNSUBSCRIBE_SECRET": settings.unsubscribe_secret or "",
        "LIFECYCLE_SENDGRID_WEBHOOK_PUBLIC_KEY": public_key,
    }
    body = json.dumps([{"event": "spamreport", "email": "Angry@Example.com",
                        "timestamp": 1_790_000_000, "sg_event_id": "e2e-1"}]).encode()  # fmt: skip
    stamp = str(int(time.time()))
    signature = base64.b64encode(key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256())))
    send_id = add_ledger_row(engine, 3)
    token = unsubscribe.token_for(settings, send_id)
    rating = httpx.URL(surveys.survey_url(settings, send_id, 9)).path

    with start_standalone(tmp_path / "airflow", port, env) as airflow:
        airflow.wait_healthy(300)
        with httpx.Client(base_url=airflow.url, timeout=60) as http:
            posted = http.post(
                "/lifecycle/events/sendgrid",
                content=body,
                headers={events.SIGNATURE_HEADER: signature.decode(),
                         events.TIMESTAMP_HEADER: stamp},
            )  # fmt: skip
            unsigned = http.post("/lifecycle/events/sendgrid", content=body)
            page = http.get(path_of(settings, token))
            done = http.post(path_of(settings, token))
            tampered_post = http.post(path_of(settings, tampered(token)))
            rating_page, rated = http.get(rating), http.post(rating)

    assert posted.status_code == 200, posted.text
    assert unsigned.status_code == 401
    assert (page.status_code, done.status_code, tampered_post.status_code) == (200, 200, 400)
    assert (rating_page.status_code, rated.status_code) == (200, 200)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(engagement_events)).scalar_one() == 1
        assert conn.execute(select(survey_responses.c.score)).scalars().all() == [9]
    assert sorted(rows(engine)) == [
        ("angry@example.com", "global", "spamreport", "webhook"),
        (EMAIL.lower(), "group:102", "group_unsubscribe", "link"),  # the birthday topic
    ]
