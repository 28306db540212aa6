"""The feedback page behind the email's 0-10 rating links (`/lifecycle/feedback/<token>`).

GET shows a thank-you page in the customer's language and records nothing: mail scanners and
prefetchers open every link of an email, all eleven scores, but do not run forms. The page
posts the score itself (a script; without scripts, its Send button does the same), and offers
a change of score and a comment. The token is the only proof: no login, no cookie.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import parse_qs

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from lifecycle.core.config import Settings
from lifecycle.feedback import surveys, tokens

log = logging.getLogger(__name__)
LOCALES = ("en", "hy", "ka")
# The form holds a score and a comment of at most MAX_COMMENT_CHARS (up to 4 UTF-8 bytes each,
# tripled by URL encoding): anything larger is no answer of ours.
MAX_FORM_BYTES = 16 * 1024 + surveys.MAX_COMMENT_CHARS * 12


class PublicContext(Protocol):
    """What the public app resolves once (`lifecycle.web.public`)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def engine(self) -> Engine: ...
    @property
    def pages(self) -> Environment: ...
    @property
    def clock(self) -> Callable[[], float]: ...


class TooLarge(Exception):
    pass


def language(locale: str | None) -> str:
    """The page language for a stored locale ('hy-AM' -> 'hy'); English when we have none."""
    code = (locale or "").replace("_", "-").split("-")[0].lower()
    return code if code in LOCALES else "en"


async def read_form(request: Request, limit: int = MAX_FORM_BYTES) -> dict[str, str]:
    """The urlencoded form (first value of each field), refused past `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


def router(context: PublicContext) -> APIRouter:
    routes = APIRouter()

    def page(status: str, locale: str, code: int = 200, **values: Any) -> HTMLResponse:
        folder = context.settings.templates_dir / "_pages" / "feedback"
        strings = yaml.safe_load((folder / f"{locale}.yaml").read_text(encoding="utf-8"))
        html = context.pages.get_template("feedback/page.html").render(
            status=status,
            locale=locale,
            t=strings,
            scores=surveys.SCORES,
            max_comment=surveys.MAX_COMMENT_CHARS,
            sender_address=context.settings.sender_address,
            **values,
        )
        return HTMLResponse(html, status_code=code)

    def surveyed(token: str) -> tuple[surveys.Answer, tokens.Recipient] | None:
        try:
            answer = surveys.verify(context.settings, token)
        except tokens.InvalidToken as exc:
            log.info("survey answer refused: %s", exc)
            return None
        found = tokens.recipient(context.engine, answer.send_id)
        if found is None:
            log.info("survey answer refused: the token names no email we sent")
            return None
        return answer, found

    @routes.get("/feedback/{token}", response_class=HTMLResponse)
    def show(token: str) -> HTMLResponse:
        known = surveyed(token)
        if known is None:
            return page("invalid", "en", 400)
        answer, found = known
        previous = surveys.stored(context.engine, answer.send_id)
        comment = previous.comment if previous else None
        return page("ask", language(found.locale), score=answer.score, comment=comment)

    @routes.post("/feedback/{token}", response_class=HTMLResponse)
    async def answer(token: str, request: Request) -> HTMLResponse:
        try:
            form: dict[str, str] | None = await read_form(request)
        except TooLarge:
            form = None
        return await run_in_threadpool(save, token, form)

    def save(token: str, form: dict[str, str] | None) -> HTMLResponse:
        """Record the posted answer; `form` None: the body was too large."""
        known = surveyed(token)
        if known is None:
            return page("invalid", "en", 400)
        link, found = known
        locale = language(found.locale)
        comment = None if form is None else form.get("comment")
        if comment is not None:
            comment = comment.strip()
        if form is None or (comment is not None and len(comment) > surveys.MAX_COMMENT_CHARS):
            return page("too_large", locale, 413, score=link.score, comment=None)
        chosen = form.get("score", str(link.score))
        if not chosen.isdigit() or int(chosen) not in surveys.SCORES:
            return page("invalid", locale, 400)
        at = datetime.fromtimestamp(context.clock(), UTC)
        surveys.record(context.engine, found, int(chosen), comment, at)
        stored = surveys.stored(context.engine, link.send_id)
        comment = stored.comment if stored else None
        return page("saved", locale, score=int(chosen), comment=comment)

    return routes
