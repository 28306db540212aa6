"""Local receivers for alerts: an SMTP server (aiosmtpd) and a chat-webhook endpoint, both on
loopback, and the Airflow connections that point the alert notifiers at them."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from fastapi import FastAPI, Request

from lifecycle.web.server import serve_in_thread

ALERT_TO = "ops@shop.example"


@dataclass
class Received:
    emails: list[EmailMessage] = field(default_factory=list)
    posts: list[dict[str, Any]] = field(default_factory=list)

    def texts(self) -> list[str]:
        """Each alert as its channel delivered it: email bodies, then webhook texts."""
        bodies = [str(m.get_body(("html", "plain")).get_content()) for m in self.emails]
        return bodies + [str(p["text"]) for p in self.posts]


class _Mailbox:
    def __init__(self, received: Received) -> None:
        self.received = received

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        message["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
        self.received.emails.append(message)
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def alert_receivers() -> Iterator[tuple[Received, dict[str, str]]]:
    """The receivers, and the AIRFLOW_CONN_* variables of the two alert connections."""
    received = Received()
    smtp = Controller(_Mailbox(received), hostname="127.0.0.1", port=_free_port())
    app = FastAPI()

    @app.post("/hooks/T000/B000/not-a-real-token")
    async def hook(request: Request) -> dict[str, str]:
        received.posts.append(await request.json())
        return {"ok": "true"}

    smtp.start()
    try:
        with serve_in_thread(app) as web:
            yield (
                received,
                {
                    "AIRFLOW_CONN_LIFECYCLE_ALERTS_SMTP": json.dumps(
                        {
                            "conn_type": "smtp",
                            "host": "127.0.0.1",
                            "port": smtp.port,
                            "extra": {
                                "from_email": "lifecycle@shop.example",
                                "to": ALERT_TO,
                                "disable_tls": True,
                                "disable_ssl": True,
                            },
                        }
                    ),
                    "AIRFLOW_CONN_LIFECYCLE_ALERTS_WEBHOOK": json.dumps(
                        {"conn_type": "http", "host": f"{web.url}/hooks/T000/B000/not-a-real-token"}
                    ),
                },
            )
    finally:
        smtp.stop()
