"""The preference page in a real headless Chromium, in English, Armenian and Georgian: the
topics in the customer's language, a choice saved by clicking, "unsubscribe from all".
Saves test-artifacts/preferences-<locale>.png."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
import yaml
from sqlalchemy import Engine, insert, select
from test_dashboard_browser import ARTIFACTS, Browser, chromium  # noqa: F401 (fixture)

from lifecycle.core.config import Settings, load_settings
from lifecycle.core.preferences import load_topics
from lifecycle.feedback import unsubscribe
from lifecycle.store import warehouse
from lifecycle.store.schema import send_ledger, suppressions
from lifecycle.web.public import standalone_app
from lifecycle.web.server import ServerHandle, serve_in_thread


@pytest.fixture
def settings(sqlite_url: str, tmp_path: Path) -> Settings:
    return load_settings(home=tmp_path, warehouse_url=sqlite_url, unsubscribe_secret="browser-s")


@pytest.fixture
def server(settings: Settings) -> Iterator[ServerHandle]:
    with serve_in_thread(standalone_app(settings)) as handle:
        yield handle


def customer(engine: Engine, customer_id: int, email: str, locale: str) -> int:
    """A sent email; returns its send_id (what its unsubscribe token names)."""
    with engine.begin() as conn:
        return conn.execute(
            insert(send_ledger)
            .values(
                campaign_id="birthday",
                occurrence_key="2026",
                customer_id=customer_id,
                run_id=1,
                status="sent",
                template="birthday",
                email=email,
                locale=locale,
                planned_at=datetime.now(UTC),
            )
            .returning(send_ledger.c.id)
        ).scalar_one()


@pytest.mark.parametrize("locale", ["en", "hy", "ka"])
def test_preferences_in_the_browser(
    settings: Settings,
    server: ServerHandle,
    chromium: str,  # noqa: F811 (the fixture imported above)
    locale: str,
) -> None:
    engine = warehouse.make_engine(settings.warehouse_url)
    email = f"{locale}-reader@example.am"
    token = unsubscribe.token_for(settings, customer(engine, 31, email, locale))
    url = unsubscribe.unsubscribe_url(settings, token).replace(settings.public_url, server.url)
    path = settings.templates_dir / "_pages" / "preferences" / f"{locale}.yaml"
    t = yaml.safe_load(path.read_text(encoding="utf-8"))
    labels = [topic.label_in(locale) for topic in load_topics(settings.preferences_file).topics]

    shown = asyncio.run(_choose(chromium, url, locale))

    assert shown["lang"] == locale and shown["heading"] == t["heading"]
    assert shown["labels"] == labels
    assert shown["saved"] == t["saved"] and shown["ticked"] == [False, True, True, True]
    assert shown["everything"].startswith(t["everything_off"].split("{email}")[0])
    with engine.connect() as conn:
        scopes = conn.execute(select(suppressions.c.scope).where(suppressions.c.email == email))
        assert sorted(scopes.scalars()) == ["global", "group:101"]
    engine.dispose()


async def _choose(ws_url: str, url: str, locale: str) -> dict[str, object]:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(ws_url, max_msg_size=0) as ws,
    ):
        page = Browser(ws)
        await page.send("Page.enable")
        await page.send("Page.navigate", url=url)
        await page.wait_for("document.querySelectorAll('input[type=checkbox]').length === 4")
        shown: dict[str, object] = {
            "lang": await page.evaluate("document.documentElement.lang"),
            "heading": await page.evaluate("document.querySelector('h1').textContent"),
            "labels": await page.evaluate(
                "[...document.querySelectorAll('label')].map(l => l.textContent.trim())"
            ),
        }
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(ARTIFACTS / f"preferences-{locale}.png")
        await page.evaluate("document.querySelector('input[value=offers]').click()")
        await page.evaluate("document.querySelector('button[value=save]').click()")
        shown["saved"] = await page.wait_for("document.querySelector('[data-notice]')?.textContent")
        shown["ticked"] = await page.evaluate(
            "[...document.querySelectorAll('input[type=checkbox]')].map(b => b.checked)"
        )
        await page.evaluate("document.querySelector('button[value=all]').click()")
        shown["everything"] = await page.wait_for(
            "document.querySelector('[data-everything-off]')?.textContent"
        )
        return shown
