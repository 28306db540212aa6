"""The feedback page in a real headless Chromium, in English, Armenian and Georgian: a page
opened without running scripts (what link scanners do) records nothing, its Send button records
the score, the page's own script records the score of the link, and a changed score with a
comment replaces the answer. Saves test-artifacts/feedback-<locale>.png."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import httpx
import pytest
import yaml
from sqlalchemy import Engine, insert, select
from test_dashboard_browser import ARTIFACTS, Browser, chromium  # noqa: F401 (fixture)

from lifecycle.core.config import Settings, load_settings
from lifecycle.feedback import surveys
from lifecycle.store import warehouse
from lifecycle.store.schema import send_ledger, survey_responses
from lifecycle.web.public import standalone_app
from lifecycle.web.server import serve_in_thread

pytestmark = pytest.mark.slow
LOCALES = {"en": "en-US", "hy": "hy-AM", "ka": "ka"}
COMMENT = "Ծանրոցը <b>ուշացավ</b> & ok"


def sent(engine: Engine, customer_id: int, locale: str) -> int:
    with engine.begin() as conn:
        return conn.execute(
            insert(send_ledger)
            .values(
                campaign_id="feedback",
                occurrence_key=str(1000 + customer_id),
                customer_id=customer_id,
                run_id=1,
                status="sent",
                template="feedback",
                email=f"c{customer_id}@example.com",
                locale=locale,
                planned_at=datetime.now(UTC),
            )
            .returning(send_ledger.c.id)
        ).scalar_one()


def answers(engine: Engine) -> dict[int, tuple[int, str | None]]:
    r = survey_responses.c
    with engine.connect() as conn:
        rows = conn.execute(select(r.customer_id, r.score, r.comment))
        return {row.customer_id: (row.score, row.comment) for row in rows}


def test_feedback_page_in_the_browser(
    chromium: str,  # noqa: F811 (the imported fixture)
    tmp_path: Path,
) -> None:
    settings = load_settings(
        home=tmp_path,
        warehouse_url=f"sqlite:///{tmp_path / 'warehouse.db'}",
        token_secrets=("browser-secret",),
    )
    engine = warehouse.make_engine(settings.warehouse_url)
    warehouse.upgrade(engine)
    ARTIFACTS.mkdir(exist_ok=True)
    with serve_in_thread(standalone_app(settings)) as server:
        asyncio.run(_answer_in_every_language(chromium, server.url, settings, engine))
    engine.dispose()


async def _answer_in_every_language(
    ws_url: str, base: str, settings: Settings, engine: Engine
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(ws_url, max_msg_size=0) as ws,
    ):
        page = Browser(ws)
        await page.send("Page.enable")
        for customer_id, (language, locale) in enumerate(LOCALES.items(), start=1):
            t = yaml.safe_load(
                (settings.templates_dir / "_pages" / "feedback" / f"{language}.yaml").read_text(
                    encoding="utf-8"
                )
            )
            send_id = sent(engine, customer_id, locale)

            def link(score: int, send_id: int = send_id) -> str:
                return base + httpx.URL(surveys.survey_url(settings, send_id, score)).path

            # A scanner: the page loads, no script runs, nothing is recorded.
            await page.send("Emulation.setScriptExecutionDisabled", value=True)
            await open_page(page, link(8))
            assert await page.evaluate("document.documentElement.lang") == language
            assert (
                await page.evaluate("document.querySelector('h1').textContent")
                == (t["thanks_heading"])
            )
            await asyncio.sleep(1)
            assert customer_id not in answers(engine)
            # Without scripts, the Send button records the link's score.
            await click_send(page)
            await page.wait_for(SAVED)
            assert answers(engine)[customer_id] == (8, None)
            await page.send("Emulation.setScriptExecutionDisabled", value=False)

            # With scripts, opening another score's link records that score by itself.
            await open_page(page, link(3))
            await page.wait_for(SAVED)
            assert answers(engine)[customer_id] == (3, None)
            assert t["saved"] in await page.evaluate("document.body.innerText")

            # A changed score and a comment replace the answer; the comment shows as text.
            await page.evaluate("document.querySelector('input[name=score][value=\"10\"]').click()")
            await page.type_into("#comment", COMMENT)
            await click_send(page)
            await page.wait_for("!!document.querySelector('[data-testid=comment]')")
            shown = await page.evaluate("document.querySelector('[data-testid=comment]').innerHTML")
            assert shown == "Ծանրոցը &lt;b&gt;ուշացավ&lt;/b&gt; &amp; ok"
            assert answers(engine)[customer_id] == (10, COMMENT)
            await page.screenshot(ARTIFACTS / f"feedback-{language}.png", full_page=True)
    assert len(answers(engine)) == len(LOCALES)


SAVED = "!!document.querySelector('[data-testid=saved]:not([hidden])')"


async def open_page(page: Browser, url: str) -> None:
    await page.send("Page.navigate", url=url)
    await page.wait_for(
        f"location.href === {json.dumps(url)} && document.readyState === 'complete'"
        " && !!document.querySelector('h1')"
    )


async def click_send(page: Browser) -> None:
    """A real mouse click on the Send button (a page without scripts cannot be scripted)."""
    root = (await page.send("DOM.getDocument"))["root"]["nodeId"]
    found = await page.send("DOM.querySelector", nodeId=root, selector="#answer button")
    await page.send("DOM.scrollIntoViewIfNeeded", nodeId=found["nodeId"])
    box = await page.send("DOM.getBoxModel", nodeId=found["nodeId"])
    x0, y0, _, _, x1, y1, _, _ = box["model"]["border"]
    x, y = (x0 + x1) / 2, (y0 + y1) / 2
    await page.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
    for kind in ("mousePressed", "mouseReleased"):
        await page.send(
            "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
        )
