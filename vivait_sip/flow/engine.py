"""The pure mdflow engine: rate measurement, congestion control, pacing and statistics.

Nothing here reads a clock or sleeps: every entry point takes ``now`` (seconds, any
monotonic origin), so tests and the load generator drive it with a fake clock and the
asyncio service drives it with ``time.monotonic``.

Decisions (see docs/mdflow.md for the reasoning):

* Congestion is judged on sliding 1-second windows (rates are per second; the window
  is 1/tasa_sal_seg seconds when that is longer): a flow in control mode is congested
  while any of its DNIS queues holds a call, while more than ``tasa_sal_seg`` calls
  arrived in the last window, or while ``ceil(tasa_sal_seg)`` calls already left in it.
  A new call never overtakes queued ones.
* Queued calls leave on ticks, paced by a virtual schedule of one slot every
  ``1/tasa_sal_seg`` seconds (at most two ticks of lateness are caught up), round-robin
  over the DNIS queues, and never more than ``ceil(tasa_sal_seg)`` in any window,
  counting immediate admissions too.
* On each tick, timeouts (``desborda``) are applied before releases.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from vivait_sip.flow.config import FlowConfig, MdflowConfig

OK = "ok"
AGUJERO = "agujero"
DESBORDA = "desborda"
ABANDONED = "abandoned"
OUTCOMES = (OK, AGUJERO, DESBORDA, ABANDONED)

#: Tolerance for float time comparisons (ticks computed as k * tick_s drift by ~1e-15).
_EPS = 1e-9


#: Share of the per-second rate a backlog second may lose to the output cap at the
#: onset of congestion: blocked slots are forgiven at this pace (see ``_keep_share``).
_FORGIVE_PER_S = 0.005


def _keep_share(tick_s: float) -> float:
    """Share of the slots blocked by the output cap kept as catch-up credit.

    One tick's worth of slots (``tasa * tick_s``) is what the first second of a backlog
    loses when calls admitted at once just before congestion still fill the output
    window. Keeping it all would make that gap recur every second (the sliding window
    remembers it); forgiving it all loses a whole tick in one second (10 % at 100 ms
    ticks). Forgiving ``_FORGIVE_PER_S / tick_s`` of it per second keeps every second
    within 0.5 % of the rate and lets the gap fade geometrically.
    """
    return max(0.0, 1.0 - _FORGIVE_PER_S / tick_s)


class UnknownFlowError(KeyError):
    """An offer named a flow that is not configured."""

    def __init__(self, flow: str) -> None:
        super().__init__(flow)
        self.flow = flow

    def __str__(self) -> str:
        return f"unknown mdflow flow {self.flow!r}"


class _DnisQueue:
    """FIFO of calls for one DNIS; ``live`` counts calls still waiting.

    Calls that left early (timeout, withdrawal) stay in ``calls`` as dead entries and
    are skipped when popped, which keeps withdrawal O(1).
    """

    __slots__ = ("calls", "dnis", "live")

    def __init__(self, dnis: str) -> None:
        self.dnis = dnis
        self.calls: deque[QueuedCall] = deque()
        self.live = 0


class QueuedCall:
    """Handle for a call waiting in a DNIS queue.

    ``outcome`` is None while it waits and becomes ``ok``, ``desborda`` or
    ``abandoned``. ``userdata`` belongs to the caller (the service keeps its future
    there) so the engine needs no handle-to-waiter map.
    """

    __slots__ = ("_queue", "dnis", "enqueued_at", "finished_at", "flow", "outcome", "userdata")

    def __init__(self, flow: str, dnis: str, now: float, queue: _DnisQueue) -> None:
        self.flow = flow
        self.dnis = dnis
        self.enqueued_at = now
        self.finished_at: float | None = None
        self.outcome: str | None = None
        self.userdata: object = None
        self._queue = queue

    @property
    def waiting(self) -> bool:
        """True until the call has an outcome."""
        return self.outcome is None

    def __repr__(self) -> str:
        return (
            f"QueuedCall(flow={self.flow!r}, dnis={self.dnis!r}, "
            f"enqueued_at={self.enqueued_at}, outcome={self.outcome!r})"
        )


class Admission:
    """Result of :meth:`MdflowEngine.offer`.

    ``outcome`` is ``ok`` (admitted now) or ``agujero`` (refused now) with ``call``
    None, or None with ``call`` the queued handle.
    """

    __slots__ = ("call", "outcome")

    def __init__(self, outcome: str | None, call: QueuedCall | None) -> None:
        self.outcome = outcome
        self.call = call

    @property
    def queued(self) -> bool:
        """True when the call waits in a queue."""
        return self.call is not None

    def __repr__(self) -> str:
        return f"Admission(outcome={self.outcome!r}, call={self.call!r})"


ADMITTED = Admission(OK, None)
REFUSED = Admission(AGUJERO, None)


class _Counts:
    """Counters of one statistics interval."""

    __slots__ = ("abandoned", "agujero", "desborda", "massive", "max_wait", "offered", "ok")

    def __init__(self) -> None:
        self.offered = 0
        self.ok = 0
        self.agujero = 0
        self.desborda = 0
        self.abandoned = 0
        self.max_wait = 0.0
        self.massive: set[str] = set()

    def add(self, other: _Counts) -> None:
        """Accumulate ``other`` into these counters (used for the running totals)."""
        self.offered += other.offered
        self.ok += other.ok
        self.agujero += other.agujero
        self.desborda += other.desborda
        self.abandoned += other.abandoned


class _Flow:
    """Mutable per-flow state; limits are updated in place on reload."""

    __slots__ = (
        "arr_cap",
        "arrivals",
        "cfg",
        "credit",
        "cur",
        "dnis_max",
        "fifo",
        "last",
        "live",
        "name",
        "out_cap",
        "outputs",
        "paid_at",
        "paso",
        "queues",
        "rr",
        "slot",
        "tat",
        "timeout",
        "totals",
        "umbral",
        "window",
    )

    def __init__(self, cfg: FlowConfig) -> None:
        self.name = cfg.flujo
        self.queues: dict[str, _DnisQueue] = {}
        self.rr: deque[_DnisQueue] = deque()
        self.fifo: deque[QueuedCall] = deque()
        self.live = 0
        self.tat = -math.inf
        self.credit = 0.0
        self.paid_at = -math.inf
        self.arrivals: deque[float] = deque()
        self.outputs: deque[float] = deque()
        self.cur = _Counts()
        self.last = _Counts()
        self.totals = _Counts()
        self.apply(cfg)

    def apply(self, cfg: FlowConfig) -> None:
        """Take new limits, keeping queues, windows and counters."""
        self.cfg = cfg
        self.paso = cfg.en_paso
        self.dnis_max = cfg.dnis_max
        self.umbral = cfg.dnis_umbral_masivo
        self.timeout = cfg.to_desborda_seg
        self.slot = 1.0 / cfg.tasa_sal_seg
        # Rates are judged over one second, or over 1/tasa seconds when tasa < 1 so
        # that a single call is not already "above the rate".
        self.window = max(1.0, self.slot) - _EPS
        per_window = cfg.tasa_sal_seg * max(1.0, self.slot)
        # More than per_window arrivals means at least floor(per_window)+1 of them.
        self.arr_cap = math.floor(per_window + _EPS) + 1
        self.out_cap = max(1, math.ceil(per_window - _EPS))
        # deque(maxlen=...) keeps the most recent entries, so windows survive a reload.
        self.arrivals = deque(self.arrivals, maxlen=self.arr_cap)
        self.outputs = deque(self.outputs, maxlen=self.out_cap)


@dataclass(frozen=True, slots=True)
class FlowStats:
    """Statistics of one flow: counts over the last completed interval, gauges now."""

    flow: str
    en_paso: bool
    in_rate: float
    admitted_rate: float
    queued: int
    oldest_wait_s: float
    max_wait_s: float
    dnis_queues: int
    massive_dnis: tuple[str, ...]
    ok: int
    agujero: int
    desborda: int
    abandoned: int
    offered: int
    totals: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MdflowSnapshot:
    """All flows at ``at``; ``interval_s`` is the length of the interval the counts cover
    and ``complete`` is False until one full interval has elapsed. ``interval_start`` is
    when the interval being accumulated began (same clock as ``at``): the counts cover
    ``[interval_start - interval_s, interval_start)`` and the next close is due at
    ``interval_start + estad_interv_seg``."""

    at: float
    interval_s: float
    complete: bool
    flows: tuple[FlowStats, ...]
    interval_start: float = 0.0


class MdflowEngine:
    """Admission control for every configured flow, advanced by :meth:`tick`."""

    def __init__(self, config: MdflowConfig, now: float) -> None:
        self._config = config
        self._tick_s = config.tick_ms / 1000.0
        self._keep = _keep_share(self._tick_s)
        self._interval_s = float(config.estad_interv_seg)
        self._interval_start = now
        self._interval_end = now + self._interval_s
        self._last_len = self._interval_s
        self._complete = False
        self._flows: dict[str, _Flow] = {f.flujo: _Flow(f) for f in config.flows}

    @property
    def config(self) -> MdflowConfig:
        """The configuration in force."""
        return self._config

    @property
    def tick_s(self) -> float:
        """Tick length in seconds."""
        return self._tick_s

    @property
    def interval_start(self) -> float:
        """Start of the statistics interval being accumulated."""
        return self._interval_start

    def flow_names(self) -> list[str]:
        """Configured flow names, in config order."""
        return list(self._flows)

    # -- decisions -------------------------------------------------------------------

    def offer(self, flow: str, dnis: str, now: float) -> Admission:
        """Decide for a new call: admit now, queue it (handle returned) or refuse it."""
        if now >= self._interval_end:
            self._roll(now)
        f = self._flows.get(flow)
        if f is None:
            raise UnknownFlowError(flow)
        cur = f.cur
        cur.offered += 1
        if f.paso:
            cur.ok += 1
            return ADMITTED
        arrivals = f.arrivals
        arrivals.append(now)
        if f.live == 0 and (len(arrivals) < f.arr_cap or now - arrivals[0] >= f.window):
            outputs = f.outputs
            if len(outputs) < f.out_cap or now - outputs[0] >= f.window:
                outputs.append(now)
                cur.ok += 1
                return ADMITTED
        queue = f.queues.get(dnis)
        if queue is None:
            if len(f.queues) >= f.dnis_max:
                cur.agujero += 1
                return REFUSED
            queue = f.queues[dnis] = _DnisQueue(dnis)
            f.rr.append(queue)
        if f.live == 0:
            # Congestion starts: one slot is due at once (the output cap still applies),
            # with no credit saved from before.
            f.tat = max(f.tat, now - f.slot)
            f.credit = 0.0
        call = QueuedCall(flow, dnis, now, queue)
        queue.calls.append(call)
        queue.live += 1
        f.live += 1
        f.fifo.append(call)
        if queue.live == f.umbral:
            cur.massive.add(dnis)
        return Admission(None, call)

    def withdraw(self, call: QueuedCall, now: float) -> bool:
        """The caller hung up while queued: the call leaves as ``abandoned``.

        Returns False (and changes nothing) if the call already has an outcome.
        """
        if call.outcome is not None:
            return False
        if now >= self._interval_end:
            self._roll(now)
        self._finish(self._flows[call.flow], call, ABANDONED, now)
        return True

    def tick(self, now: float) -> list[QueuedCall]:
        """Apply timeouts then releases; return the calls that got an outcome."""
        if now >= self._interval_end:
            self._roll(now)
        events: list[QueuedCall] = []
        for f in self._flows.values():
            if f.live == 0:
                if f.fifo:
                    f.fifo.clear()
                    f.rr.clear()
                continue
            self._expire(f, now, events)
            if f.live:
                self._release(f, now, events)
        return events

    def _expire(self, f: _Flow, now: float, events: list[QueuedCall]) -> None:
        """Calls queued since ``to_desborda_seg`` or longer leave as ``desborda``."""
        fifo = f.fifo
        limit = now - f.timeout + _EPS
        while fifo:
            call = fifo[0]
            if call.outcome is not None:
                fifo.popleft()
                continue
            if call.enqueued_at > limit:
                break
            fifo.popleft()
            self._finish(f, call, DESBORDA, now)
            events.append(call)

    def _release(self, f: _Flow, now: float, events: list[QueuedCall]) -> None:
        """Release due slots round-robin over the DNIS queues within the 1 s output cap.

        A slot overdue by more than two ticks (a stalled loop) is moved up so no burst
        of saved credit follows. Slots that were due but blocked by the output cap are
        not lost outright: a share ``_keep`` of them (at most one tick's worth in all)
        becomes catch-up credit, paid back a little on each later tick on top of the
        schedule, always within the output cap. Blocked time earns no schedule credit
        itself: the next tick releases one tick's worth (at least one call).
        """
        tick_s = self._tick_s
        slot_end = max(f.tat + f.slot, now - 2 * tick_s)
        outputs = f.outputs
        deadline = now + _EPS
        while f.live and slot_end <= deadline:
            if len(outputs) >= f.out_cap and now - outputs[0] < f.window:
                tat = max(f.tat, now - max(0.0, f.slot - tick_s))
                if tat >= slot_end - _EPS and self._losing(f, now):
                    dropped = math.floor((tat - slot_end) / f.slot + _EPS) + 1
                    per_tick = max(1, math.ceil(f.cfg.tasa_sal_seg * tick_s - _EPS))
                    f.credit = min(float(per_tick), f.credit + self._keep * dropped)
                f.tat = tat
                return
            self._release_one(f, now, events)
            f.tat = slot_end
            slot_end += f.slot
        if f.credit >= 1.0 and f.live:
            # Pay the credit back over about one window's worth of ticks, never in a burst.
            per_tick = max(1, math.ceil(f.cfg.tasa_sal_seg * tick_s - _EPS))
            ticks = max(1, round(f.window / tick_s) - 1)
            extra = min(int(f.credit + _EPS), math.ceil(per_tick / ticks))
            while extra and f.live:
                if len(outputs) >= f.out_cap and now - outputs[0] < f.window:
                    return
                self._release_one(f, now, events)
                f.credit -= 1.0
                f.paid_at = now
                extra -= 1

    def _losing(self, f: _Flow, now: float) -> bool:
        """Would slots the output cap blocks now be lost for good?

        Two cases: the window's oldest output leaves it strictly between this tick and
        the next (outputs off the tick grid: calls admitted at once before congestion),
        so the next tick cannot use all the room it frees; or catch-up credit was paid
        within the last window, whose releases now block this tick in turn.
        """
        if now - f.paid_at < f.window + self._tick_s:
            return True
        frees_at = f.outputs[0] + f.window
        return now + _EPS < frees_at < now + self._tick_s - _EPS

    def _release_one(self, f: _Flow, now: float, events: list[QueuedCall]) -> None:
        """Release the next call in round-robin order over the DNIS queues."""
        rr = f.rr
        queue = rr.popleft()
        while queue.live == 0:
            queue = rr.popleft()
        calls = queue.calls
        call = calls.popleft()
        while call.outcome is not None:
            call = calls.popleft()
        self._finish(f, call, OK, now)
        f.outputs.append(now)
        events.append(call)
        if queue.live:
            rr.append(queue)

    def _finish(self, f: _Flow, call: QueuedCall, outcome: str, now: float) -> None:
        """Give a queued call its outcome and update queue bookkeeping and counters."""
        call.outcome = outcome
        call.finished_at = now
        queue = call._queue
        queue.live -= 1
        f.live -= 1
        if queue.live == 0 and f.queues.get(queue.dnis) is queue:
            del f.queues[queue.dnis]
        cur = f.cur
        wait = now - call.enqueued_at
        if wait > cur.max_wait:
            cur.max_wait = wait
        if outcome == OK:
            cur.ok += 1
        elif outcome == DESBORDA:
            cur.desborda += 1
        else:
            cur.abandoned += 1

    # -- statistics ----------------------------------------------------------------

    def _roll(self, now: float) -> None:
        """Close the current interval (and any empty ones skipped since)."""
        elapsed = max(1, int((now - self._interval_start) // self._interval_s))
        for f in self._flows.values():
            f.totals.add(f.cur)
            f.last = f.cur if elapsed == 1 else _Counts()
            f.cur = _Counts()
            f.cur.massive.update(d for d, q in f.queues.items() if q.live >= f.umbral)
        self._last_len = self._interval_s
        self._complete = True
        self._interval_start += elapsed * self._interval_s
        self._interval_end = self._interval_start + self._interval_s

    def snapshot(self, now: float) -> MdflowSnapshot:
        """Statistics of the last completed interval plus queue gauges at ``now``."""
        if now >= self._interval_end:
            self._roll(now)
        span = self._last_len
        flows = []
        for f in self._flows.values():
            last = f.last
            fifo = f.fifo
            while fifo and fifo[0].outcome is not None:
                fifo.popleft()
            oldest = now - fifo[0].enqueued_at if fifo else 0.0
            totals = {"offered": f.totals.offered + f.cur.offered}
            for outcome in OUTCOMES:
                totals[outcome] = getattr(f.totals, outcome) + getattr(f.cur, outcome)
            flows.append(
                FlowStats(
                    flow=f.name,
                    en_paso=f.paso,
                    in_rate=last.offered / span,
                    admitted_rate=last.ok / span,
                    queued=f.live,
                    oldest_wait_s=oldest,
                    max_wait_s=last.max_wait,
                    dnis_queues=len(f.queues),
                    massive_dnis=tuple(sorted(last.massive)),
                    ok=last.ok,
                    agujero=last.agujero,
                    desborda=last.desborda,
                    abandoned=last.abandoned,
                    offered=last.offered,
                    totals=totals,
                )
            )
        return MdflowSnapshot(
            at=now,
            interval_s=span,
            complete=self._complete,
            flows=tuple(flows),
            interval_start=self._interval_start,
        )

    # -- reload --------------------------------------------------------------------

    def reload(self, config: MdflowConfig, now: float) -> list[QueuedCall]:
        """Apply a new configuration live; return calls released by the change.

        Queued calls and statistics of kept flows survive. Calls queued in a removed
        flow, or in a flow switched to ``en_paso``, are released at once as ``ok``:
        nothing limits them any more.
        """
        if now >= self._interval_end:
            self._roll(now)
        events: list[QueuedCall] = []
        flows: dict[str, _Flow] = {}
        for cfg in config.flows:
            f = self._flows.pop(cfg.flujo, None)
            if f is None:
                f = _Flow(cfg)
            else:
                was_paso = f.paso
                f.apply(cfg)
                if cfg.en_paso and not was_paso:
                    self._drain(f, now, events)
                elif was_paso and not cfg.en_paso:
                    f.arrivals.clear()
                    f.outputs.clear()
            flows[cfg.flujo] = f
        for removed in self._flows.values():
            self._drain(removed, now, events)
        self._flows = flows
        self._config = config
        self._tick_s = config.tick_ms / 1000.0
        self._keep = _keep_share(self._tick_s)
        self._interval_s = float(config.estad_interv_seg)
        self._interval_end = self._interval_start + self._interval_s
        return events

    def _drain(self, f: _Flow, now: float, events: list[QueuedCall]) -> None:
        """Release every waiting call of ``f`` as ``ok``, oldest first."""
        for call in f.fifo:
            if call.outcome is None:
                self._finish(f, call, OK, now)
                events.append(call)
        f.fifo.clear()
        f.rr.clear()
        f.queues.clear()
