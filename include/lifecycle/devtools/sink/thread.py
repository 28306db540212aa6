"""A sink on a free loopback port in a background thread, for in-process tests and benchmarks."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from lifecycle.devtools.sink.app import Extension, SinkState, build_app, make_state


class SinkHandle:
    """A sink running on 127.0.0.1 in a background thread; `with` stops it on exit."""

    def __init__(self, state: SinkState, extensions: Iterable[Extension]):
        self.state = state
        self._extensions = list(extensions)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._serve, name="lifecycle-sink", daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or not self.port:
            raise RuntimeError("the sink did not start within 30 s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._runner = web.AppRunner(
                build_app(self.state, self._extensions), access_log=None, handle_signals=False
            )
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
            await site.start()
            self.port = self._runner.addresses[0][1]

        try:
            self._loop.run_until_complete(start())
        finally:
            self._ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        if not self._loop.is_running():
            return

        async def shutdown() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    def __enter__(self) -> SinkHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def run_sink_in_thread(extensions: Iterable[Extension] = (), **options: Any) -> SinkHandle:
    """Start a sink on a free port; options are `make_state`'s (api_keys, keep_bodies, seed,
    latency_ms, rate_429, rate_5xx, rate_drop, rate_slow, slow_ms, fail_next, ...)."""
    return SinkHandle(make_state(**options), extensions)
