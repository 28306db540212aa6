"""The feedback page over real HTTP on both warehouses: a GET records nothing, a POST records
one answer per email (a second changes it), bad tokens are 400 and oversized comments 413, with
nothing stored either way."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import Engine, insert, select

from lifecycle.core.config import Settings, load_settings
from lifecycle.feedback import surveys, unsubscribe
from lifecycle.store.schema import send_ledger, survey_responses
from lifecycle.web.public import create_app, standalone_app
from lifecycle.web.server import serve_in_thread

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@pytest.fixture
def settings(warehouse_url: str, tmp_path: Path) -> Settings:
    return load_settings(
        home=tmp_path, warehouse_url=warehouse_url, token_secrets=("survey-test-secret",)
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[httpx.Client]:
    with (
        serve_in_thread(standalone_app(settings)) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        yield http


def sent(engine: Engine, customer_id: int = 17, locale: str | None = "en") -> int:
    with engine.begin() as conn:
        return conn.execute(
            insert(send_ledger)
            .values(
                campaign_id="feedback",
                occurrence_key=f"order-{customer_id}",
                customer_id=customer_id,
                run_id=1,
                status="sent",
                template="feedback",
                email=f"c{customer_id}@example.com",
                locale=locale,
                planned_at=NOW,
                sent_at=NOW,
            )
            .returning(send_ledger.c.id)
        ).scalar_one()


def path(settings: Settings, send_id: int, score: int) -> str:
    return httpx.URL(surveys.survey_url(settings, send_id, score)).path


def stored(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(select(survey_responses))]


def strings(settings: Settings, locale: str) -> dict[str, str]:
    folder = settings.templates_dir / "_pages" / "feedback"
    return yaml.safe_load((folder / f"{locale}.yaml").read_text(encoding="utf-8"))


def test_opening_every_link_records_nothing(
    client: httpx.Client, settings: Settings, engine: Engine
) -> None:
    send_id = sent(engine)
    pages = [client.get(path(settings, send_id, score)) for score in range(11)]
    assert {page.status_code for page in pages} == {200}
    assert strings(settings, "en")["thanks_heading"] in pages[7].text
    assert 'value="7" checked' in pages[7].text
    assert stored(engine) == []


def test_posting_records_once_and_a_second_answer_changes_the_score(
    client: httpx.Client, settings: Settings, engine: Engine
) -> None:
    send_id = sent(engine)
    first = client.post(path(settings, send_id, 3), data={"score": "3"})
    again = client.post(path(settings, send_id, 3), data={"score": "3"})
    assert first.status_code == again.status_code == 200
    assert strings(settings, "en")["saved"] in first.text
    (row,) = stored(engine)
    assert (row["send_id"], row["campaign_id"], row["occurrence_key"], row["customer_id"]) == (
        send_id,
        "feedback",
        "order-17",
        17,
    )
    assert (row["score"], row["comment"]) == (3, None)

    rescored = client.post(path(settings, send_id, 9), data={"score": "9"})
    assert rescored.status_code == 200
    (row,) = stored(engine)
    assert row["score"] == 9

    other = sent(engine, customer_id=18)
    client.post(path(settings, other, 0))  # no form: the link's own score
    assert sorted((r["customer_id"], r["score"]) for r in stored(engine)) == [(17, 9), (18, 0)]


def test_a_comment_is_stored_as_text_kept_by_later_scores_and_shown_escaped(
    client: httpx.Client, settings: Settings, engine: Engine
) -> None:
    send_id = sent(engine)
    comment = "<script>alert('x')</script> late & damaged"
    saved = client.post(path(settings, send_id, 2), data={"score": "4", "comment": comment})
    assert saved.status_code == 200
    assert "<script>alert" not in saved.text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; late &amp; damaged" in saved.text

    client.post(path(settings, send_id, 5), data={"score": "5"})  # what the page's script sends
    (row,) = stored(engine)
    assert (row["score"], row["comment"]) == (5, comment)
    shown = client.get(path(settings, send_id, 5)).text
    assert "<script>alert" not in shown and "&lt;script&gt;" in shown

    client.post(path(settings, send_id, 5), data={"score": "5", "comment": "  "})
    assert stored(engine)[0]["comment"] is None  # an emptied box removes the comment


def tampered(token: str) -> str:
    return token[:-1] + ("A" if token[-1] != "A" else "B")


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize(
    "kind", ["tampered", "foreign", "swapped", "unknown-send", "unsubscribe-token", "malformed"]
)
def test_bad_tokens_get_400_and_store_nothing(
    client: httpx.Client, settings: Settings, engine: Engine, method: str, kind: str
) -> None:
    send_id, other = sent(engine), sent(engine, customer_id=18)
    token = surveys.token_for(settings, send_id, 9)
    foreign = replace(settings, token_secrets=("someone-else",))
    bad = {
        "tampered": tampered(token),
        "foreign": surveys.token_for(foreign, send_id, 9),
        "swapped": f"{surveys.token_for(settings, other, 0).split('.')[0]}.{token.split('.')[1]}",
        "unknown-send": surveys.token_for(settings, 10_000, 9),
        "unsubscribe-token": unsubscribe.token_for(settings, send_id),
        "malformed": "not-a-token",
    }[kind]
    response = client.request(method, f"/lifecycle/feedback/{bad}", data={"score": "9"})
    assert response.status_code == 400
    assert strings(settings, "en")["invalid_heading"] in response.text
    assert stored(engine) == []


@pytest.mark.parametrize("score", ["11", "-1", "seven", ""])
def test_a_score_outside_0_to_10_is_400(
    client: httpx.Client, settings: Settings, engine: Engine, score: str
) -> None:
    response = client.post(path(settings, sent(engine), 9), data={"score": score})
    assert response.status_code == 400
    assert stored(engine) == []


def test_an_oversized_comment_is_413_and_stores_nothing(
    client: httpx.Client, settings: Settings, engine: Engine
) -> None:
    send_id = sent(engine)
    too_long = "x" * (surveys.MAX_COMMENT_CHARS + 1)
    response = client.post(path(settings, send_id, 1), data={"score": "1", "comment": too_long})
    assert response.status_code == 413
    assert strings(settings, "en")["thanks_heading"] in response.text
    huge = client.post(
        path(settings, send_id, 1),
        content=b"score=1&comment=" + b"y" * 1_000_000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert huge.status_code == 413
    assert stored(engine) == []

    at_limit = "ա" * surveys.MAX_COMMENT_CHARS  # the limit counts characters, not bytes
    ok = client.post(path(settings, send_id, 1), data={"score": "1", "comment": at_limit})
    assert ok.status_code == 200
    assert stored(engine)[0]["comment"] == at_limit


@pytest.mark.parametrize("locale", ["hy-AM", "ka_GE", "fr", None])
def test_the_page_speaks_the_language_of_the_email(
    client: httpx.Client, settings: Settings, engine: Engine, locale: str | None
) -> None:
    language = {"hy-AM": "hy", "ka_GE": "ka"}.get(locale or "", "en")
    send_id = sent(engine, locale=locale)
    page = client.get(path(settings, send_id, 6))
    assert f'<html lang="{language}">' in page.text
    assert strings(settings, language)["thanks_heading"] in page.text
    saved = client.post(path(settings, send_id, 6))
    assert strings(settings, language)["saved"] in saved.text


def test_answer_time_comes_from_the_apps_clock(settings: Settings, engine: Engine) -> None:
    send_id = sent(engine)
    app = create_app(settings, clock=lambda: NOW.timestamp())
    with (
        serve_in_thread(app) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        token = surveys.token_for(settings, send_id, 8)
        assert http.post(f"/feedback/{token}").status_code == 200
    (row,) = stored(engine)
    assert row["answered_at"] == row["updated_at"] == NOW
