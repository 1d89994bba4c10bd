"""Load shedding: answer 503 + Retry-After early instead of collapsing under retransmissions.

When the event loop falls behind, every response is late, UDP clients retransmit after
T1, and the extra load makes every response later still: throughput collapses.  The
monitor measures how late a periodic wake-up runs (the loop's lag); above a threshold the
core refuses new requests with a cheap 503 until the lag is back under half of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

log = logging.getLogger("vivait_sip.overload")


class LagMonitor:
    """Tracks event-loop lag with hysteresis; `overloaded` is what the core reads."""

    def __init__(
        self,
        threshold_s: float,
        interval_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] = lambda overloaded: None,
    ) -> None:
        self.threshold_s = threshold_s
        self.interval_s = interval_s
        self.clock = clock
        self.on_change = on_change
        self.overloaded = False
        self.lag_s = 0.0
        self.episodes = 0
        self._task: asyncio.Task[None] | None = None

    def observe(self, lag_s: float) -> None:
        """Feed one lag measurement (pure: tests call it directly)."""
        self.lag_s = lag_s
        if not self.overloaded and lag_s > self.threshold_s:
            self.overloaded = True
            self.episodes += 1
            log.warning("event=overload_start lag_ms=%d threshold_ms=%d", lag_s * 1000, self.threshold_s * 1000)
            self.on_change(True)
        elif self.overloaded and lag_s < self.threshold_s / 2:
            self.overloaded = False
            log.warning("event=overload_end lag_ms=%d", lag_s * 1000)
            self.on_change(False)

    async def _run(self) -> None:
        while True:
            started = self.clock()
            await asyncio.sleep(self.interval_s)
            self.observe(max(0.0, self.clock() - started - self.interval_s))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
