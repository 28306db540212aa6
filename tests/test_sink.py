"""The local SendGrid-compatible sink, over real HTTP on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from python_http_client.exceptions import BadRequestsError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import Mail

from lifecycle.sink import SinkHandle, run_sink_in_thread

KEY = "SG.sink-test-key"


@pytest.fixture
def sink() -> Iterator[SinkHandle]:
    with run_sink_in_thread(api_keys=[KEY]) as handle:
        yield handle


def mail(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "personalizations": [{"to": [{"email": "ani@example.am"}], "custom_args": {"a": "1"}}],
        "from": {"email": "hello@shop.example"},
        "subject": "Hi",
        "content": [
            {"type": "text/plain", "value": "plain"},
            {"type": "text/html", "value": "<p>html</p>"},
        ],
    }
    body.update(changes)
    return body


def post(sink: SinkHandle, body: Any, key: str = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{sink.url}/v3/mail/send", json=body, headers=headers, timeout=10)


def test_accepts_a_valid_mail_and_stores_it(sink: SinkHandle) -> None:
    response = post(sink, mail())
    assert response.status_code == 202
    message_id = response.headers["X-Message-Id"]
    assert len(message_id) == 22
    stored = sink.state.snapshot()
    assert [m["message_id"] for m in stored] == [message_id]
    assert stored[0]["to"] == ["ani@example.am"]
    assert stored[0]["custom_args"] == {"a": "1"}
    listed = httpx.get(f"{sink.url}/_sink/messages").json()
    assert listed["total"] == 1 and listed["messages"][0]["message_id"] == message_id


def test_sandbox_mode_answers_200(sink: SinkHandle) -> None:
    response = post(sink, mail(mail_settings={"sandbox_mode": {"enable": True}}))
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"personalizations": []}, "personalizations"),
        ({"from": {}}, "from.email"),
        (
            {"personalizations": [{"to": [{"email": f"c{i}@x.am"}]} for i in range(1001)]},
            "personalizations",
        ),
        (
            {"personalizations": [{"to": [{"email": "a@x.am"}, {"email": "A@x.am"}]}]},
            "personalizations.0.to",
        ),
        (
            {"personalizations": [{"to": [{"email": "a@x.am"}], "custom_args": {"n": 1}}]},
            "personalizations.0.custom_args",
        ),
        (
            {
                "personalizations": [
                    {"to": [{"email": "a@x.am"}], "custom_args": {"n": "x" * 10_000}}
                ]
            },
            "personalizations.0.custom_args",
        ),
        ({"categories": [f"c{i}" for i in range(11)]}, "categories"),
        ({"categories": ["a", "a"]}, "categories"),
        ({"categories": ["día"]}, "categories"),
        (
            {
                "content": [
                    {"type": "text/html", "value": "<p>x</p>"},
                    {"type": "text/plain", "value": "x"},
                ]
            },
            "content.0.type",
        ),
        ({"content": []}, "content"),
    ],
)
def test_rejects_what_sendgrid_rejects(sink: SinkHandle, changes: dict, field: str) -> None:
    response = post(sink, mail(**changes))
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["field"] == field and error["message"]
    assert sink.state.snapshot() == []


def test_more_than_1000_recipients_in_total(sink: SinkHandle) -> None:
    people = [{"to": [{"email": f"p{i}a@x.am"}, {"email": f"p{i}b@x.am"}]} for i in range(501)]
    response = post(sink, mail(personalizations=people))
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "personalizations"


def test_wrong_or_missing_key_is_401(sink: SinkHandle) -> None:
    assert post(sink, mail(), key="SG.other").status_code == 401
    response = httpx.post(f"{sink.url}/v3/mail/send", json=mail())
    assert response.status_code == 401
    assert response.json()["errors"][0]["message"]


def test_injected_faults_in_order(sink: SinkHandle) -> None:
    response = httpx.post(f"{sink.url}/_sink/faults", json={"fail_next": ["429", "503", "drop"]})
    assert response.status_code == 200
    limited = post(sink, mail())
    assert limited.status_code == 429
    assert int(limited.headers["X-RateLimit-Reset"]) > 0
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert post(sink, mail()).status_code == 503
    with pytest.raises(httpx.TransportError):
        post(sink, mail())
    assert post(sink, mail()).status_code == 202
    assert len(sink.state.snapshot()) == 1
    assert sink.state.stats["dropped"] == 1


def test_unknown_fault_settings_are_rejected(sink: SinkHandle) -> None:
    response = httpx.post(f"{sink.url}/_sink/faults", json={"rate_teapot": 1})
    assert response.status_code == 400
    assert "rate_teapot" in response.json()["errors"][0]["message"]


def test_latency_is_applied(sink: SinkHandle) -> None:
    sink.state.faults.update({"latency_ms": 300})
    response = post(sink, mail())
    assert response.status_code == 202
    assert response.elapsed.total_seconds() >= 0.3


def test_official_client_talks_to_the_sink(sink: SinkHandle) -> None:
    client = SendGridAPIClient(api_key=KEY, host=sink.url)
    message = Mail(
        from_email="hello@shop.example",
        to_emails="nare@example.am",
        subject="Hello",
        plain_text_content="plain",
        html_content="<p>html</p>",
    )
    response = client.send(message)
    assert response.status_code == 202
    assert sink.state.recipients() == {"nare@example.am": 1}
    bad = Mail(from_email="hello@shop.example", to_emails="nare@example.am", subject="x")
    with pytest.raises(BadRequestsError):
        client.send(bad)


def test_extensions_can_add_routes() -> None:
    from aiohttp import web

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"pong": True})

    def register(app: web.Application) -> None:
        app.router.add_get("/v3/ping", ping)

    with run_sink_in_thread(extensions=[register]) as handle:
        assert httpx.get(f"{handle.url}/v3/ping").json() == {"pong": True}
