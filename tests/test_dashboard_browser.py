"""End to end: Airflow with our plugin, a real headless Chromium, Airflow's login page, and the
Campaigns page showing the figures the warehouse holds. Saves test-artifacts/dashboard.png.

Chromium is driven over the Chrome DevTools Protocol with aiohttp's websocket client (already
in the lock), so no browser driver or download is needed; Debian's `chromium` package is.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from campaign_results import expected_figures

from lifecycle.core import features
from lifecycle.core.campaigns import load_campaigns
from lifecycle.core.config import PROJECT_ROOT, load_settings
from lifecycle.devtools import demo, seed
from lifecycle.devtools.standalone import Standalone, start_standalone
from lifecycle.run.campaign import run_campaign
from lifecycle.store import warehouse

pytestmark = pytest.mark.slow
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]
METRICS_IN_FRAME = """
(() => {
  const frame = document.querySelector('iframe');
  const doc = frame && frame.contentDocument;
  if (!doc || !doc.querySelector('[data-metric="sent"]')) return null;
  const shown = {};
  for (const el of doc.querySelectorAll('[data-metric]')) shown[el.dataset.metric] = el.textContent;
  return shown;
})()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Browser:
    """A page in headless Chromium, driven by DevTools Protocol commands."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self.ids)
        await self.ws.send_json({"id": message_id, "method": method, "params": params})
        async for message in self.ws:
            reply = json.loads(message.data)
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
        raise RuntimeError("the browser closed the DevTools connection")

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := await self.evaluate(expression):
                return value
            await asyncio.sleep(0.5)
        location = await self.evaluate("location.href")
        raise AssertionError(f"timed out waiting for {expression!r} at {location}")

    async def type_into(self, selector: str, text: str) -> None:
        await self.wait_for(f"!!document.querySelector({json.dumps(selector)})")
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.send("Input.insertText", text=text)

    async def screenshot(self, path: Path, full_page: bool = False) -> None:
        shot = await self.send(
            "Page.captureScreenshot", format="png", captureBeyondViewport=full_page
        )
        path.write_bytes(base64.b64decode(shot["data"]))


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[str]:
    """A running headless Chromium; yields its page's DevTools websocket URL."""
    executable = shutil.which("chromium")
    assert executable, "Debian's chromium package is required: apt-get install -y chromium"
    profile = tmp_path / "chromium"
    process = subprocess.Popen(
        [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            assert process.poll() is None, "chromium exited"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        yield next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def airflow(tmp_path: Path) -> Iterator[tuple[Standalone, str]]:
    """Airflow standalone with this repo's plugin, on demo data: a seeded warehouse, every
    shipped campaign run (`lifecycle run`'s code path, as `airflow dags test` would), and
    what `make demo` adds after the emails (simulated engagement and orders)."""
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    settings = load_settings(warehouse_url=url, home=tmp_path / "lifecycle", transport="outbox")
    engine = warehouse.make_engine(url)
    warehouse.upgrade(engine)
    as_of = seed.seed(engine, 3_000, seed=5, as_of=datetime(2026, 11, 24, 11, tzinfo=UTC)).as_of
    features.materialize(engine, as_of, settings)
    specs = load_campaigns(settings.campaigns_dir).specs
    for spec in specs.values():
        if spec.live:  # as `make demo` does: a draft mails nobody
            run_campaign(engine, spec, settings, as_of=as_of, run_key=f"scheduled__{spec.id}")
    demo.after_the_emails(engine, specs, datetime.now(UTC))
    engine.dispose()
    env = {
        "LIFECYCLE_HOME": str(tmp_path / "lifecycle"),
        "LIFECYCLE_WAREHOUSE_URL": url,
        "AIRFLOW_CONN_LIFECYCLE_WAREHOUSE": json.dumps(
            {"conn_type": "sqlite", "host": str(tmp_path / "warehouse.db")}
        ),
    }
    standalone = start_standalone(tmp_path / "airflow", free_port(), env)
    try:
        standalone.wait_healthy(timeout=400)
        yield standalone, url
    finally:
        standalone.stop()


@pytest.mark.timeout(1200)  # the machine may be shared: Airflow and Chromium start slowly
def test_dashboard_in_airflow_shows_the_warehouse_figures(
    airflow: tuple[Standalone, str], chromium: str
) -> None:
    standalone, url = airflow
    engine = warehouse.make_engine(url)
    expected = expected_figures(engine)
    engine.dispose()
    ARTIFACTS.mkdir(exist_ok=True)
    shown = asyncio.run(_log_in_and_read_campaigns(standalone, chromium))
    for key, value in expected.items():
        assert shown.get(key) == f"{value:,}", key
    assert number(shown["simulated_events"]) > 0
    # The retention story: simulated orders after the emails, more among the emailed than in
    # the holdout groups, and emails waiting for their customers' send window.
    assert number(shown["simulated_orders"]) > 0
    assert number(shown["conversions"]) > 0
    assert shown["revenue"] not in ("$0.00", "—")
    assert re.fullmatch(r"\+\d+\.\d pts", shown["uplift"]), shown["uplift"]
    assert re.fullmatch(r"\+\d+\.\d pts", shown["reengagement.uplift"])
    assert expected["waiting"] > 0 and shown["waiting"] == f"{expected['waiting']:,}"
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


def number(text: str) -> int:
    return int(text.replace(",", ""))


async def _log_in_and_read_campaigns(standalone: Standalone, ws_url: str) -> dict[str, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(ws_url, max_msg_size=0) as ws,
    ):
        page = Browser(ws)
        await page.send("Page.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            width=1440,
            height=1400,
            deviceScaleFactor=1,
            mobile=False,
        )
        # Airflow sends an anonymous visitor to its login page.
        await page.send("Page.navigate", url=f"{standalone.url}/plugin/campaigns")
        await page.wait_for("location.pathname.startsWith('/auth/login')")
        await page.type_into("input[name=username]", "admin")
        await page.type_into("input[name=password]", standalone.admin_password())
        await page.evaluate("document.querySelector('button[type=submit]').click()")
        await page.wait_for("!location.pathname.startsWith('/auth/')")

        await page.send("Page.navigate", url=f"{standalone.url}/plugin/campaigns")
        # The nav entry exists, and the page inside the iframe has rendered its figures.
        await page.wait_for(
            "[...document.querySelectorAll('a')].some(a => a.textContent.trim() === 'Campaigns')"
        )
        shown = await page.wait_for(METRICS_IN_FRAME, timeout=90)
        await asyncio.sleep(1)  # let the frame finish painting its charts
        await page.screenshot(ARTIFACTS / "dashboard.png")

        # The whole page on its own, for people reviewing the test run.
        await page.send("Page.navigate", url=f"{standalone.url}/campaigns/")
        await page.wait_for("!!document.querySelector('[data-metric=\"sent\"]')")
        await page.screenshot(ARTIFACTS / "dashboard-full.png", full_page=True)
        return shown
