"""A token bucket shared by the coroutines of one delivery attempt."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """At most `rate` acquisitions per second on average, bursts up to `burst`."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate / 20)
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self, count: int = 1) -> None:
        """Wait for a token, then take `count` (a bulk request's recipients): the balance may go
        negative, so later acquisitions wait for the debt and the average rate holds."""
        async with self._lock:  # FIFO: waiters are served in arrival order
            while True:
                now = time.monotonic()
                self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= count
                    return
                await asyncio.sleep((1 - self._tokens) / self.rate)
