"""The asyncio service and its admin routes, driven by a fake clock where possible."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from vivait_sip.flow.admin import add_routes
from vivait_sip.flow.config import MdflowConfig
from vivait_sip.flow.engine import ABANDONED, AGUJERO, DESBORDA, OK, UnknownFlowError
from vivait_sip.flow.service import MdflowService

from .helpers import config, flow


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def settle() -> None:
    """Let woken tasks run."""
    for _ in range(3):
        await asyncio.sleep(0)


async def advance(service: MdflowService, clock: FakeClock, seconds: float) -> None:
    """Move the fake clock tick by tick, running the service's step each time."""
    for _ in range(round(seconds / 0.1)):
        clock.now = round(clock.now + 0.1, 6)
        service.step()
        await settle()


async def test_admit_returns_at_once_or_after_release() -> None:
    clock = FakeClock()
    service = MdflowService(config(flow(tasa_sal_seg=1, dnis_max=1, to_desborda_seg=3)), clock)
    assert await service.admit("F", "1") == OK
    waiter = asyncio.create_task(service.admit("F", "1"))
    await settle()
    assert not waiter.done()
    assert await service.admit("F", "2") == AGUJERO
    await advance(service, clock, 1.0)
    assert waiter.done() and waiter.result() == OK


async def test_admit_times_out_as_desborda() -> None:
    clock = FakeClock()
    service = MdflowService(config(flow(tasa_sal_seg=1, to_desborda_seg=1)), clock)
    await service.admit("F", "1")
    waiter = asyncio.create_task(service.admit("F", "1"))
    await settle()
    await advance(service, clock, 1.0)
    assert waiter.result() == DESBORDA


async def test_cancelled_admit_is_withdrawn_as_abandoned() -> None:
    clock = FakeClock()
    service = MdflowService(config(flow(tasa_sal_seg=1, dnis_max=1)), clock)
    await service.admit("F", "1")
    waiter = asyncio.create_task(service.admit("F", "1"))
    await settle()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    stats = service.snapshot().flows[0]
    assert stats.queued == 0 and stats.totals[ABANDONED] == 1
    # The DNIS queue slot is free again.
    second = asyncio.create_task(service.admit("F", "2"))
    await settle()
    assert service.snapshot().flows[0].dnis_queues == 1
    second.cancel()


async def test_admit_unknown_flow_raises() -> None:
    service = MdflowService(config(flow()), FakeClock())
    with pytest.raises(UnknownFlowError):
        await service.admit("nope", "1")


async def test_reload_wakes_calls_of_a_removed_flow() -> None:
    clock = FakeClock()
    service = MdflowService(config(flow("A", tasa_sal_seg=1), flow("B")), clock)
    await service.admit("A", "1")
    waiter = asyncio.create_task(service.admit("A", "1"))
    await settle()
    assert service.reload(config(flow("B"))) == 1
    await settle()
    assert waiter.result() == OK
    assert service.config_text().splitlines()[1].startswith("flow=B ")


async def test_simulate_counts_immediate_outcomes_and_patience_abandons() -> None:
    clock = FakeClock()
    service = MdflowService(config(flow(tasa_sal_seg=2, dnis_max=1, to_desborda_seg=10)), clock)
    counts = service.simulate("F", [("1", 0.0), ("1", 0.0), ("1", 0.01), ("1", 0.0), ("2", 0.0)])
    assert counts == {OK: 2, AGUJERO: 1, "queued": 2}
    await asyncio.sleep(0.05)  # the patient-for-10-ms call gives up (real loop timer)
    assert service.snapshot().flows[0].totals[ABANDONED] == 1
    await advance(service, clock, 1.0)
    assert service.snapshot().flows[0].totals[OK] == 3


async def test_tick_loop_runs_on_the_real_clock() -> None:
    service = MdflowService(config(flow(tasa_sal_seg=100, dnis_max=1), tick_ms=10))
    await service.start()
    try:
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(service.admit("F", "1") for _ in range(110))), timeout=5
        )
    finally:
        await service.stop()
    assert outcomes == [OK] * 110


Admin = tuple[TestClient[web.Request, web.Application], MdflowService, FakeClock]


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    clock = FakeClock()
    service = MdflowService(config(flow("A", tasa_sal_seg=1, dnis_max=1), interval=1), clock)
    reloaded = config(flow("A", tasa_sal_seg=5, dnis_max=1), flow("B"), interval=1)

    def source() -> MdflowConfig:
        return reloaded

    app = web.Application()
    add_routes(app, service, reload_source=source)
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client, service, clock
    await client.close()


async def test_admin_config_text_and_json(admin: Admin) -> None:
    client, service, _ = admin
    response = await client.get("/api/mdflow/config")
    assert response.status == 200
    assert await response.text() == service.config_text()
    response = await client.get("/api/mdflow/config?format=json")
    assert (await response.json())["flows"][0]["flujo"] == "A"


async def test_admin_calls_then_stats_in_every_format(admin: Admin) -> None:
    client, service, clock = admin
    body = {"flow": "A", "calls": [{"dnis": "1"}, {"dnis": "1"}, {"dnis": "2", "hold_ms": 0}]}
    response = await client.post("/api/mdflow/calls", json=body)
    assert response.status == 200
    assert await response.json() == {OK: 1, AGUJERO: 1, "queued": 1}
    await advance(service, clock, 1.0)
    text = await (await client.get("/api/mdflow/stats")).text()
    assert text.startswith("flow=A mode=control interval_s=1 complete=1 in_rate=3.00")
    data = await (await client.get("/api/mdflow/stats?format=json")).json()
    assert data["flows"][0]["offered"] == 3 and data["flows"][0]["agujero"] == 1
    metrics = await client.get("/api/mdflow/metrics")
    assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert 'vivait_mdflow_offered_total{flow="A"} 3' in await metrics.text()
    assert (await client.get("/api/mdflow/stats?format=xml")).status == 400


async def test_admin_calls_rejects_bad_bodies(admin: Admin) -> None:
    client, _, _ = admin
    missing = await client.post("/api/mdflow/calls", json={"flow": "Z", "calls": []})
    assert missing.status == 404
    assert (await missing.json())["error"] == "unknown mdflow flow 'Z'"
    bad = await client.post("/api/mdflow/calls", json={"flow": "A", "calls": [{"dnis": ""}]})
    assert bad.status == 400


async def test_admin_reload_from_source_and_from_body(admin: Admin) -> None:
    client, service, _ = admin
    service.simulate("A", [("1", 0.0), ("1", 0.0)])
    response = await client.post("/api/mdflow/reload")
    assert await response.json() == {
        "flows": ["A", "B"], "released": 0,
        "added": ["B"], "removed": [], "changed": {"A": {"tasa_sal_seg": [1.0, 5.0]}}, "unchanged": [], "general": {},
    }
    assert service.snapshot().flows[0].queued == 1
    changed = {**flow("B").model_dump(), "tasa_sal_seg": 9.0}
    response = await client.post("/api/mdflow/reload", json={"flows": [changed], "tick_ms": 50, "estad_interv_seg": 1})
    reply = await response.json()
    assert reply["flows"] == ["B"] and reply["released"] == 1
    assert reply["removed"] == ["A"] and reply["added"] == []
    assert reply["changed"] == {"B": {"tasa_sal_seg": [flow("B").tasa_sal_seg, 9.0]}}
    assert reply["general"] == {"tick_ms": [100, 50]}
    response = await client.post("/api/mdflow/reload", json={"flows": [{"flujo": "C"}]})
    assert response.status == 400
    assert "invalid mdflow config" in (await response.json())["error"]
    assert service.engine.flow_names() == ["B"]


async def test_admin_debug_streams_stats_each_interval(admin: Admin) -> None:
    client, service, clock = admin
    response = await client.get("/api/mdflow/debug")
    assert response.status == 200
    service.simulate("A", [("1", 0.0)])
    await advance(service, clock, 1.0)
    chunk = await asyncio.wait_for(response.content.readuntil(b"\n\n"), timeout=2)
    assert chunk.decode().startswith("flow=A mode=control interval_s=1 complete=1 in_rate=1.00")
    response.close()


async def test_stopping_the_service_ends_debug_streams(admin: Admin) -> None:
    client, service, clock = admin
    response = await client.get("/api/mdflow/debug")
    assert response.status == 200
    await advance(service, clock, 1.0)
    first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), timeout=2)
    assert first.startswith(b"flow=A ")
    await service.stop()
    # The stream ends (EOF) instead of waiting forever for an interval that cannot close.
    rest = await asyncio.wait_for(response.content.read(), timeout=2)
    assert rest == b""


async def test_tick_jitter_does_not_lower_the_admitted_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    # The loop wakes up a few ms after each tick is due, by a varying amount, or a hair
    # early (uvloop's timers have millisecond resolution).  Ticks run at the time they
    # were due: releases one second apart stay exactly one second apart and the 1 s
    # output cap blocks none of them.  (Ticks at the wake-up instants made a release
    # land a hair inside the window of the one a second earlier now and then, and so
    # did a schedule restarted after an early wake-up: 45-47 calls in 10 s, not 50.)
    clock = FakeClock()
    real_sleep = asyncio.sleep
    lateness = itertools.cycle([0.003, 0.0, 0.001, -0.0008, 0.004, 0.0005, 0.002, -0.0003, 0.0])

    async def late_wake_up(delay: float) -> None:
        clock.now += max(0.0, delay) + next(lateness)
        await real_sleep(0)

    service = MdflowService(config(flow(tasa_sal_seg=5, dnis_max=20, to_desborda_seg=60)), clock)
    released: list[float] = []
    for i in range(100):  # a flood at one instant: 5 admitted at once, the rest queued
        service.offer("F", f"d{i % 20}", lambda outcome: released.append(clock.now) if outcome == OK else None)
    assert len(released) == 5
    monkeypatch.setattr(asyncio, "sleep", late_wake_up)
    await service.start()
    try:
        while clock.now < 10.5:
            await real_sleep(0)
    finally:
        monkeypatch.setattr(asyncio, "sleep", real_sleep)
        await service.stop()
    assert sum(1 for t in released if t < 9.95) == 50, " ".join(f"{t:.3f}" for t in released)  # 5 at 0, then 5 a second
