"""asyncio wrapper around :class:`MdflowEngine` owned by the server.

One task ticks every flow (never a task or timer per call); callers of
:meth:`MdflowService.admit` park on a future stored in the queued call's
``userdata`` and are woken by the tick that gives the call its outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable

from vivait_sip.flow.config import MdflowConfig
from vivait_sip.flow.engine import AGUJERO, OK, MdflowEngine, MdflowSnapshot, QueuedCall
from vivait_sip.flow.render import render_config, render_prometheus, render_stats


class MdflowService:
    """Holds the engine, runs its tick loop and resolves waiting callers."""

    def __init__(self, config: MdflowConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._engine = MdflowEngine(config, clock())
        self._task: asyncio.Task[None] | None = None
        self._interval_seen = self._engine.interval_start
        self._debug_queues: set[asyncio.Queue[str | None]] = set()

    @property
    def engine(self) -> MdflowEngine:
        """The engine (for tests and introspection; mutate it only through the service)."""
        return self._engine

    @property
    def config(self) -> MdflowConfig:
        """The configuration in force."""
        return self._engine.config

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start the tick loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="mdflow-tick")

    async def stop(self) -> None:
        """Stop the tick loop; queued callers keep waiting until a later start().

        ``mdflow debug`` streams are ended (their queues get ``None``): no interval
        closes without ticks, and a stream left open would hold up the admin server's
        shutdown.
        """
        for queue in self._debug_queues:
            queue.put_nowait(None)
        self._debug_queues.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        clock = self._clock
        next_at = clock()
        while True:
            tick_s = self._engine.tick_s
            next_at += tick_s
            delay = next_at - clock()
            if not 0.0 <= delay <= 2 * tick_s:
                # Overrun (skip the missed ticks: the engine catches up on elapsed time),
                # or a clock that does not move (a test's): the schedule starts again now.
                # (A wake-up a little early, as uvloop's millisecond timers do, is neither.)
                next_at = clock() + (tick_s if delay > 0 else 0.0)
                delay = next_at - clock()
            await asyncio.sleep(delay)
            # The tick runs at the time it was due, not at the instant the loop woke up
            # (a few ms later, by a varying amount): the engine compares the times of
            # releases one second apart with its 1 s output cap, and with wake-up jitter
            # a release found itself a hair inside the window of the one a second
            # earlier, lost its slot, and the flow admitted ~10 % under tasa_sal_seg at
            # 5/s.  A wake-up a whole tick late is a late tick: it runs at its real time.
            now = clock()
            self.step(next_at if abs(now - next_at) < tick_s else now)

    def step(self, now: float | None = None) -> int:
        """Run one tick (at `now`, default the clock) and wake the callers concerned;
        return how many calls ended."""
        events = self._engine.tick(self._clock() if now is None else now)
        self._resolve(events)
        self._notify_interval()
        return len(events)

    def _resolve(self, events: Iterable[QueuedCall]) -> None:
        for call in events:
            waiter = call.userdata
            if isinstance(waiter, asyncio.Future):
                if not waiter.done():
                    waiter.set_result(call.outcome)
            elif isinstance(waiter, asyncio.TimerHandle):
                waiter.cancel()
            elif callable(waiter):
                waiter(call.outcome)

    def _notify_interval(self) -> None:
        """Feed ``mdflow debug`` watchers once per closed statistics interval."""
        start = self._engine.interval_start
        if start == self._interval_seen:
            return
        self._interval_seen = start
        if self._debug_queues:
            text = self.stats_text()
            for queue in self._debug_queues:
                queue.put_nowait(text)

    # -- calls -----------------------------------------------------------------------

    async def admit(self, flow: str, dnis: str) -> str:
        """Admission for one call: returns ``ok``, ``agujero`` or ``desborda``.

        Waits while the call is queued. If the awaiting task is cancelled (the caller
        hung up) the call is withdrawn and counted as abandoned. Raises
        :class:`UnknownFlowError` for a flow that is not configured.
        """
        admission = self._engine.offer(flow, dnis, self._clock())
        call = admission.call
        if call is None:
            assert admission.outcome is not None
            return admission.outcome
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        call.userdata = future
        try:
            return await future
        except asyncio.CancelledError:
            self._engine.withdraw(call, self._clock())
            raise

    def offer(self, flow: str, dnis: str, on_outcome: Callable[[str], None]) -> QueuedCall | None:
        """Admission without waiting: the immediate outcome goes to `on_outcome` at once
        and None is returned; a queued call is returned (for `withdraw`) and
        `on_outcome` runs when a tick releases it or it overflows (`desborda`).
        Raises :class:`UnknownFlowError` for a flow that is not configured."""
        admission = self._engine.offer(flow, dnis, self._clock())
        call = admission.call
        if call is None:
            assert admission.outcome is not None
            on_outcome(admission.outcome)
            return None
        call.userdata = on_outcome
        return call

    def withdraw(self, call: QueuedCall) -> bool:
        """The caller left while queued (CANCEL, link lost): counted as abandoned."""
        return self._engine.withdraw(call, self._clock())

    def simulate(self, flow: str, calls: Iterable[tuple[str, float]]) -> dict[str, int]:
        """Offer synthetic calls ``(dnis, patience_s)``; return immediate outcome counts.

        Queued synthetic calls wait for the tick loop like real ones; a positive
        patience withdraws (abandons) the call if it is still queued after that many
        seconds, 0 waits for release or ``desborda``.
        """
        counts = {OK: 0, AGUJERO: 0, "queued": 0}
        loop = asyncio.get_running_loop()
        engine = self._engine
        for dnis, patience in calls:
            admission = engine.offer(flow, dnis, self._clock())
            call = admission.call
            if call is None:
                assert admission.outcome is not None
                counts[admission.outcome] += 1
                continue
            counts["queued"] += 1
            if patience > 0:
                call.userdata = loop.call_later(patience, self._abandon, call)
        return counts

    def _abandon(self, call: QueuedCall) -> None:
        self._engine.withdraw(call, self._clock())

    # -- admin -----------------------------------------------------------------------

    def reload(self, config: MdflowConfig) -> int:
        """Apply a new configuration live; return how many queued calls it released."""
        events = self._engine.reload(config, self._clock())
        self._resolve(events)
        return len(events)

    def snapshot(self) -> MdflowSnapshot:
        """Current statistics snapshot."""
        return self._engine.snapshot(self._clock())

    def stats_text(self) -> str:
        """``mdflow show stats`` text."""
        return render_stats(self.snapshot())

    def config_text(self) -> str:
        """``mdflow show config`` text."""
        return render_config(self._engine.config)

    def prometheus_text(self) -> str:
        """Prometheus exposition of the current snapshot."""
        return render_prometheus(self.snapshot())

    def debug_subscribe(self) -> asyncio.Queue[str | None]:
        """``mdflow debug``: a queue that receives the stats text each time an interval
        closes, and ``None`` when the service stops. Subscribing before the first await
        means no interval is missed."""
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._debug_queues.add(queue)
        return queue

    def debug_unsubscribe(self, queue: asyncio.Queue[str | None]) -> None:
        """Stop feeding a queue from :meth:`debug_subscribe`."""
        self._debug_queues.discard(queue)
