"""Garbage collection: short pauses under load, memory handed back after it.

CPython's cyclic collector walks every tracked object of the generations it collects.
Under a flood the live set is mostly transactions waiting out Timer H or J (64*T1), tens
of thousands of them; a collection of the oldest generations then walked millions of
objects and paused the loop for 0.8-1.3 s (issue 9: legitimate REGISTERs got 503).
Three things keep pauses short (measured with bench/invite_flood.py, bench/RESULTS.md):

* start-up objects (users, config, modules) are frozen out of the collector's sight;
* the young generations are collected often and stay small (generation 0 every
  `YOUNG` net allocations, generation 1 every `MIDDLE` of those), so each of those
  collections walks a bounded number of objects whatever the live set;
* generation 2, the whole heap, is never collected automatically: `GcKeeper` collects
  it when the server is quiet (few live transactions, so little to walk), and at least
  every `max_interval_s` whatever the load, so cyclic garbage stays bounded.  After a
  busy period it also hands freed heap pages back to the OS (glibc `malloc_trim`): the
  memory a flood used is returned rather than kept as free space inside the process.

Collections of 50 ms or more are logged as `event=gc_pause`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable

from .logs import throttle

log = logging.getLogger("vivait_sip.gc")

YOUNG = 10_000  # generation 0: net new tracked objects between collections
MIDDLE = 5  # generation 1: every 5th young collection
OLD = 1_000_000_000  # generation 2: left to GcKeeper (CPython would also wait for 25 % growth)
SLOW_GC_S = 0.05

_started = 0.0
stats = {"collections": 0, "max_pause_ms": 0.0, "full": 0, "trims": 0}


def _on_gc(phase: str, info: dict[str, int]) -> None:
    """Times every collection; one long enough to delay SIP traffic gets a (throttled) log line."""
    global _started
    if phase == "start":
        _started = time.perf_counter()
        return
    took = time.perf_counter() - _started
    stats["collections"] += 1
    stats["max_pause_ms"] = max(stats["max_pause_ms"], round(took * 1000, 1))
    if took >= SLOW_GC_S:
        throttle.log(
            log, logging.WARNING, "gc_pause", "event=gc_pause generation=%d ms=%.0f collected=%d",
            info.get("generation", -1), took * 1000, info.get("collected", 0),
        )


def tune_gc() -> None:
    """Freeze what start-up built and set the thresholds above (see the module doc)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, MIDDLE, OLD)
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)


def _malloc_trim() -> Callable[[], None] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class GcKeeper:
    """Runs the full collections CPython no longer runs by itself (see `tune_gc`).

    `load()` is the number of live transactions: the bulk of what a full collection would
    walk.  Checked every `check_every_s`; a full collection runs when the load is below
    `quiet_below` (at most every `min_interval_s`) or `max_interval_s` after the last one
    whatever the load.  After a collection that follows a busy period, `malloc_trim`.
    """

    def __init__(
        self,
        load: Callable[[], int],
        *,
        quiet_below: int = 2000,
        check_every_s: float = 5.0,
        min_interval_s: float = 30.0,
        max_interval_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
        trim: Callable[[], None] | None = None,
    ) -> None:
        self.load = load
        self.quiet_below = quiet_below
        self.check_every_s = check_every_s
        self.min_interval_s = min_interval_s
        self.max_interval_s = max_interval_s
        self.clock = clock
        self.trim = trim if trim is not None else _malloc_trim()
        self.last_full = clock()
        self.busy_since_trim = False
        self._task: asyncio.Task[None] | None = None

    def tick(self) -> bool:
        """One check; True when it ran a full collection."""
        now = self.clock()
        load = self.load()
        if load >= self.quiet_below:
            self.busy_since_trim = True
        since = now - self.last_full
        if not ((load < self.quiet_below and since >= self.min_interval_s) or since >= self.max_interval_s):
            return False
        started = time.perf_counter()
        collected = gc.collect()
        took_ms = (time.perf_counter() - started) * 1000
        self.last_full = self.clock()
        stats["full"] += 1
        trimmed = False
        if self.busy_since_trim and load < self.quiet_below and self.trim is not None:
            self.trim()
            self.busy_since_trim = False
            stats["trims"] += 1
            trimmed = True
        log.debug("event=gc_full ms=%.0f collected=%d load=%d trimmed=%s", took_ms, collected, load, trimmed)
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.check_every_s)
            try:
                self.tick()
            except Exception:
                log.exception("event=gc_keeper_error")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
