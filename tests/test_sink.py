"""The local SendGrid-compatible sink, over real HTTP on loopback."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from python_http_client.exceptions import BadRequestsError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import Mail

from lifecycle.devtools.sink.thread import SinkHandle, run_sink_in_thread

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
        ({"custom_args": ["a"]}, "custom_args"),
        ({"custom_args": "a=1"}, "custom_args"),
        (
            {"personalizations": [{"to": [{"email": "a@x.am"}], "custom_args": "a=1"}]},
            "personalizations.0.custom_args",
        ),
        ({"categories": [["a"]]}, "categories"),
        ({"categories": [{"a": 1}]}, "categories"),
        ({"categories": "lifecycle"}, "categories"),
        ({"categories": [""]}, "categories"),
        ({"categories": ["c" * 256]}, "categories"),
        ({"content": [{"type": "text/plain", "value": ""}]}, "content.0.value"),
        ({"content": [{"type": "text/plain"}]}, "content.0.value"),
        ({"content": [{"type": "text/plain", "value": 5}]}, "content.0.value"),
        ({"content": [{"type": "", "value": "x"}]}, "content.0.type"),
        (
            {
                "content": [
                    {"type": "text/plain", "value": "x"},
                    {"type": "text/calendar", "value": "x"},
                    {"type": "text/html", "value": "<p>x</p>"},
                ]
            },
            "content.1.type",
        ),
        (
            {
                "content": [
                    {"type": "text/calendar", "value": "x"},
                    {"type": "text/plain", "value": "x"},
                    {"type": "text/html", "value": "<p>x</p>"},
                ]
            },
            "content.0.type",
        ),
        (
            {
                "content": [
                    {"type": "text/plain", "value": "x"},
                    {"type": "text/plain", "value": "y"},
                ]
            },
            "content",
        ),
        ({"personalizations": "ani@example.am"}, "personalizations"),
        ({"personalizations": ["ani@example.am"]}, "personalizations.0"),
        ({"personalizations": [{"to": {"email": "a@x.am"}}]}, "personalizations.0.to"),
        ({"personalizations": [{"cc": [{"email": "a@x.am"}]}]}, "personalizations.0.to"),
        ({"personalizations": [{"to": [{"name": "Ani"}]}]}, "personalizations.0.to"),
        ({"personalizations": [{"to": ["a@x.am"]}]}, "personalizations.0.to"),
        (
            {"personalizations": [{"to": [{"email": "a@x.am"}], "cc": "b@x.am"}]},
            "personalizations.0.cc",
        ),
        (
            {"personalizations": [{"to": [{"email": "a@x.am"}], "cc": [{"email": "a@x.am"}]}]},
            "personalizations.0.cc",
        ),
        (
            {"personalizations": [{"to": [{"email": "a@x.am"}], "bcc": [{"email": "A@X.am"}]}]},
            "personalizations.0.bcc",
        ),
        (
            {
                "personalizations": [
                    {"to": [{"email": "a@x.am"}], "cc": [{"email": "b@x.am"}]},
                    {"to": [{"email": "B@x.AM"}]},
                ]
            },
            "personalizations.1.to",
        ),
        ({"from": "hello@shop.example"}, "from"),
        ({"from": {"email": "hello@shop.example", "name": 5}}, "from.name"),
        ({"headers": ["X-Campaign: a"]}, "headers"),
        ({"subject": ["Hi"]}, "subject"),
        ({"subject": ""}, "subject"),
        ({"mail_settings": [{"sandbox_mode": True}]}, "mail_settings"),
        ({"mail_settings": {"sandbox_mode": True}}, "mail_settings.sandbox_mode"),
        (
            {"mail_settings": {"sandbox_mode": {"enable": "yes"}}},
            "mail_settings.sandbox_mode.enable",
        ),
        (
            {"tracking_settings": {"click_tracking": {"enable": True, "enable_text": "no"}}},
            "tracking_settings.click_tracking.enable_text",
        ),
        ({"asm": {"group_id": "42"}}, "asm.group_id"),
        (
            {
                "reply_to": {"email": "care@shop.example"},
                "reply_to_list": [{"email": "care@shop.example"}],
            },
            "reply_to_list",
        ),
        ({"reply_to_list": [{"email": "a@x.am"}, {"email": "A@x.am"}]}, "reply_to_list.1"),
    ],
)
def test_rejects_what_sendgrid_rejects(sink: SinkHandle, changes: dict, field: str) -> None:
    response = post(sink, mail(**changes))
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["field"] == field and error["message"]
    assert sink.state.snapshot() == []


def full_mail() -> dict[str, Any]:
    """A valid mail using most optional fields, to fuzz every position of."""
    return mail(
        personalizations=[
            {
                "to": [{"email": "ani@example.am", "name": "Ani"}],
                "cc": [{"email": "cc@example.am"}],
                "bcc": [{"email": "bcc@example.am"}],
                "subject": "Hi Ani",
                "headers": {"X-Campaign": "spring"},
                "substitutions": {"-name-": "Ani"},
                "custom_args": {"send_id": "1"},
                "send_at": 1_700_000_000,
            }
        ],
        reply_to={"email": "care@shop.example", "name": "Care"},
        custom_args={"campaign": "spring"},
        categories=["lifecycle", "spring"],
        headers={"List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
        asm={"group_id": 42, "groups_to_display": [42]},
        mail_settings={"sandbox_mode": {"enable": False}},
        tracking_settings={"click_tracking": {"enable": True, "enable_text": False}},
    )


def positions(value: Any, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, child in items:
        yield (*prefix, key)
        if isinstance(child, dict | list):
            yield from positions(child, (*prefix, key))


def replaced(body: dict[str, Any], position: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    body = copy.deepcopy(body)
    parent: Any = body
    for key in position[:-1]:
        parent = parent[key]
    parent[position[-1]] = value
    return body


WRONG_VALUES = [None, True, 0, 1.5, "", "x", [], [None], [[]], {}, {"k": []}]


@pytest.mark.parametrize("wrong", WRONG_VALUES, ids=repr)
def test_a_wrong_value_anywhere_is_a_400_never_a_500(sink: SinkHandle, wrong: Any) -> None:
    body = full_mail()
    assert post(sink, body).status_code == 202
    unexpected = []
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as client:
        for position in positions(body):
            response = client.post(f"{sink.url}/v3/mail/send", json=replaced(body, position, wrong))
            # 200: sandbox_mode.enable became True, which is valid
            if response.status_code not in (200, 202, 400) or (
                response.status_code == 400 and not response.json()["errors"][0]["message"]
            ):
                unexpected.append((position, response.status_code))
    assert unexpected == []


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json"),
        (json.dumps(mail()).encode(), "application/json; charset=no-such-charset"),
    ],
    ids=["not-json", "deeply-nested", "unknown-charset"],
)
def test_undecodable_bodies_are_400(sink: SinkHandle, content: bytes, content_type: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": content_type}
    response = httpx.post(f"{sink.url}/v3/mail/send", content=content, headers=headers)
    assert response.status_code == 400
    assert response.json()["errors"][0]["message"]


def with_custom_args(message_level: dict[str, str], personal: dict[str, str]) -> dict[str, Any]:
    people = [{"to": [{"email": "a@x.am"}], "custom_args": personal}]
    return mail(personalizations=people, custom_args=message_level)


def test_custom_args_size_is_counted_in_utf8_bytes(sink: SinkHandle) -> None:
    assert post(sink, with_custom_args({}, {"n": "é" * 4_000})).status_code == 202  # 8,008 bytes
    too_big = post(sink, with_custom_args({}, {"n": "é" * 5_000}))  # 10,008 bytes
    assert too_big.status_code == 400
    assert too_big.json()["errors"][0]["field"] == "personalizations.0.custom_args"


def test_custom_args_limit_applies_to_message_level_and_personalization_merged(
    sink: SinkHandle,
) -> None:
    half = "x" * 6_000
    response = post(sink, with_custom_args({"a": half}, {"b": half}))
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "personalizations.0.custom_args"
    # the same key is overridden by the personalization, not counted twice
    assert post(sink, with_custom_args({"a": half}, {"a": half})).status_code == 202


def test_subject_is_required_without_a_template(sink: SinkHandle) -> None:
    body = mail()
    del body["subject"]
    response = post(sink, body)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "subject"
    body["personalizations"] = [
        {"to": [{"email": "a@x.am"}], "subject": "A"},
        {"to": [{"email": "b@x.am"}]},
    ]
    assert post(sink, body).status_code == 400
    body["personalizations"][1]["subject"] = "B"
    assert post(sink, body).status_code == 202


def test_a_template_replaces_subject_and_content(sink: SinkHandle) -> None:
    body = mail(template_id="d-0123456789abcdef")
    del body["subject"], body["content"]
    assert post(sink, body).status_code == 202


@pytest.mark.parametrize(
    "changes",
    [
        {
            "content": [
                {"type": "text/plain", "value": "x"},
                {"type": "text/html", "value": "<p>x</p>"},
                {"type": "text/calendar", "value": "BEGIN:VCALENDAR"},
            ]
        },
        {"content": [{"type": "text/html", "value": "<p>x</p>"}]},
        {"categories": ["c" * 255]},
        {"reply_to_list": [{"email": "care@shop.example"}, {"email": "sales@shop.example"}]},
        {"custom_args": {}, "categories": [], "headers": {}},
        {
            "tracking_settings": {
                "click_tracking": {"enable": True, "enable_text": True},
                "open_tracking": {"enable": False},
            }
        },
    ],
)
def test_accepts_valid_variants(sink: SinkHandle, changes: dict[str, Any]) -> None:
    assert post(sink, mail(**changes)).status_code == 202


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
