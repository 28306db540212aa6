"""The preference centre: the page an email's unsubscribe link opens.

`GET /unsubscribe/<token>` shows the topics (include/preferences.yaml) with the ones the
customer receives ticked, and "unsubscribe from all"; the form posts to
`POST /preferences/<token>`. `POST /unsubscribe/<token>` is the RFC 8058 one-click target: it
unsubscribes from the email's own topic (its campaign's unsubscribe group; every email when the
campaign has none) at once. The token is the only proof, as for every public route.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import parse_qs

import yaml
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment
from sqlalchemy import Engine

from lifecycle.core.campaigns import load_campaigns
from lifecycle.core.config import Settings
from lifecycle.core.preferences import Topics, load_topics
from lifecycle.feedback import preferences, unsubscribe

log = logging.getLogger(__name__)
MAX_FORM_BYTES = 4_096


class PublicContext(Protocol):
    """What the public app resolves once: settings, warehouse, page templates, clock."""

    @property
    def settings(self) -> Settings: ...
    @property
    def engine(self) -> Engine: ...
    @property
    def pages(self) -> Environment: ...
    @property
    def clock(self) -> Callable[[], float]: ...


def register(
    app: FastAPI,
    context: PublicContext,
    verified: Callable[[str], unsubscribe.Unsubscribe | None],
    locale_of: Callable[[Engine, int], str],
    mask: Callable[[str], str],
) -> None:
    """Add the preference routes to the public app."""

    def strings(locale: str) -> dict[str, str]:
        path = context.settings.templates_dir / "_pages" / "preferences" / f"{locale}.yaml"
        return yaml.safe_load(path.read_text(encoding="utf-8"))

    def page(
        token: str,
        who: unsubscribe.Unsubscribe | None,
        notice: str | None = None,
        topic: str = "",
        code: int = 200,
    ) -> HTMLResponse:
        """The page; `notice` names the string to show above the topics."""
        values: dict[str, Any] = {"status": "invalid", "locale": "en"}
        if who is not None:
            topics = load_topics(context.settings.preferences_file)
            values = {
                "status": "choose",
                "locale": locale_of(context.engine, who.customer_id),
                "topics": topics.topics,
                "choices": preferences.current(context.engine, topics, who.email),
                "email": mask(who.email),
                "token": token,
            }
        t = strings(values["locale"])
        html = context.pages.get_template("preferences/page.html").render(
            t=t,
            notice=t[notice].replace("{topic}", topic) if notice else None,
            sender_address=context.settings.sender_address,
            **values,
        )
        return HTMLResponse(html, status_code=code)

    def now() -> datetime:
        return datetime.fromtimestamp(context.clock(), UTC)

    @app.get("/unsubscribe/{token}", response_class=HTMLResponse)
    def show_preferences(token: str) -> HTMLResponse:
        who = verified(token)
        return page(token, who) if who else page(token, None, code=400)

    # Also the RFC 8058 one-click target: mail clients POST "List-Unsubscribe=One-Click" here.
    @app.post("/unsubscribe/{token}", response_class=HTMLResponse)
    def one_click(token: str) -> HTMLResponse:
        who = verified(token)
        if who is None:
            return page(token, None, code=400)
        spec = load_campaigns(context.settings.campaigns_dir).specs.get(who.campaign_id)
        group_id = spec.delivery.asm_group_id if spec else None
        preferences.unsubscribe_group(context.engine, who.email, group_id, now())
        topic = load_topics(context.settings.preferences_file).by_group(group_id)
        if group_id is None:
            return page(token, who, "done_all")
        locale = locale_of(context.engine, who.customer_id)
        label = topic.label_in(locale) if topic else str(group_id)
        return page(token, who, "done_topic", topic=label)

    @app.post("/preferences/{token}", response_class=HTMLResponse)
    async def save(token: str, request: Request) -> HTMLResponse:
        who = verified(token)
        if who is None:
            return page(token, None, code=400)
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return HTMLResponse("form too large", status_code=413)
        form = parse_qs(body.decode("utf-8", errors="replace"))
        if form.get("action") == ["all"]:
            preferences.unsubscribe_group(context.engine, who.email, None, now())
            return page(token, who, "done_all")
        topics: Topics = load_topics(context.settings.preferences_file)
        chosen = set(form.get("topic", [])) & {topic.id for topic in topics.topics}
        preferences.save(context.engine, topics, who.email, chosen, now())
        return page(token, who, "saved")
