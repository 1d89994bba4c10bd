"""Location service: bindings, flows, purge, ordering, write-behind and memory."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from vivait_sip.registrar.location import Binding, LocationService, key_text, normalise_contact
from vivait_sip.store import Store

AOR = "sip:6140@example.com"


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(contact: str, clock: FakeClock, expires: float = 3600, **kw: Any) -> Binding:
    fields: dict[str, Any] = {
        "aor": AOR,
        "contact": contact,
        "expires_at": clock.now + expires,
        "call_id": "c1",
        "cseq": 1,
        "transport": "udp",
        "source_host": "192.0.2.10",
        "source_port": 5060,
        "registered_at": clock.now,
    }
    fields.update(kw)
    return Binding(**fields)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def loc(clock: FakeClock) -> LocationService:
    return LocationService(None, clock)


def test_contact_key_follows_rfc3261_uri_comparison() -> None:
    assert normalise_contact("sip:6140@EXAMPLE.com;Transport=TCP;ob") == normalise_contact(
        "sip:6140@example.com;ob;transport=tcp"
    )
    assert normalise_contact("sip:%36140@h") == normalise_contact("sip:6140@h")
    assert normalise_contact("sip:Alice@h") != normalise_contact(
        "sip:alice@h"
    )  # user part is case-sensitive
    assert normalise_contact("sip:a@h:5060") != normalise_contact(
        "sip:a@h"
    )  # an explicit port differs
    assert normalise_contact("not a uri") == "not a uri"


def test_flow_key_uses_instance_and_reg_id(clock: FakeClock) -> None:
    b = make(
        "sip:6140@198.51.100.7:40000;transport=tcp", clock, instance='"<urn:uuid:1>"', reg_id=1
    )
    assert b.key == ('"<urn:uuid:1>"', 1)
    assert key_text(b.key).startswith("flow ")
    assert make("sip:a@h", clock, instance='"<urn:uuid:1>"').key == "sip:a@h"


def test_put_refresh_remove(loc: LocationService, clock: FakeClock) -> None:
    loc.put(make("sip:6140@192.0.2.10", clock))
    loc.put(make("sip:6140@192.0.2.11", clock))
    assert loc.count() == 2
    refreshed = make("sip:6140@192.0.2.10", clock, expires=60, cseq=2)
    loc.put(refreshed)
    assert loc.count() == 2
    assert loc.get(AOR, "sip:6140@192.0.2.10") is refreshed
    assert loc.remove(AOR, refreshed.key)
    assert not loc.remove(AOR, refreshed.key)
    assert [b.contact for b in loc.bindings(AOR)] == ["sip:6140@192.0.2.11"]
    assert loc.remove_aor(AOR) == 1
    assert loc.bindings(AOR) == [] and loc.all_aors() == [] and loc.count() == 0


def test_a_new_contact_on_the_same_flow_replaces_the_binding(
    loc: LocationService, clock: FakeClock
) -> None:
    loc.put(make("sip:6140@198.51.100.7:40000", clock, instance="i", reg_id=1, conn_id=5))
    loc.put(make("sip:6140@198.51.100.7:40001", clock, instance="i", reg_id=1, conn_id=6))
    assert [b.contact for b in loc.bindings(AOR)] == ["sip:6140@198.51.100.7:40001"]
    assert loc.remove_flow(5) == 0  # the old connection no longer carries it
    assert loc.remove_flow(6) == 1
    assert loc.count() == 0


def test_flow_failure_removes_only_that_flows_bindings(
    loc: LocationService, clock: FakeClock
) -> None:
    loc.put(
        make("sip:6140@198.51.100.7:40000;transport=tcp", clock, instance="a", reg_id=1, conn_id=7)
    )
    loc.put(
        make("sip:6140@198.51.100.8:40000;transport=tcp", clock, instance="b", reg_id=1, conn_id=8)
    )
    loc.put(
        Binding(
            aor="sip:6141@example.com",
            contact="sip:6141@198.51.100.7:40000",
            expires_at=clock.now + 60,
            conn_id=7,
        )
    )
    loc.put(make("sip:6140@192.0.2.20", clock))  # UDP, no flow
    assert loc.remove_flow(7) == 2
    assert loc.remove_flow(7) == 0
    assert sorted(b.contact for b in loc.bindings(AOR)) == [
        "sip:6140@192.0.2.20",
        "sip:6140@198.51.100.8:40000;transport=tcp",
    ]
    assert loc.all_aors() == [AOR]


def test_ordering_by_q_then_most_recent(loc: LocationService, clock: FakeClock) -> None:
    loc.put(make("sip:a@h", clock, q=0.5, registered_at=clock.now - 10))
    loc.put(make("sip:b@h", clock, q=1.0, registered_at=clock.now - 20))
    loc.put(make("sip:c@h", clock, q=0.5, registered_at=clock.now - 5))
    loc.put(make("sip:d@h", clock, q=0.1))
    assert [b.contact for b in loc.bindings(AOR)] == ["sip:b@h", "sip:c@h", "sip:a@h", "sip:d@h"]


def test_expiry_and_purge(loc: LocationService, clock: FakeClock) -> None:
    loc.put(make("sip:short@h", clock, expires=30))
    loc.put(make("sip:long@h", clock, expires=300))
    clock.now += 30
    assert [b.contact for b in loc.bindings(AOR)] == ["sip:long@h"]  # expired at exactly expires_at
    assert loc.count() == 2  # held until purged
    assert loc.purge_expired() == 1
    assert loc.count() == 1
    assert loc.purge_expired(now=clock.now + 1000) == 1
    assert loc.all_aors() == []


def test_snapshot_and_expires_in(loc: LocationService, clock: FakeClock) -> None:
    b = make("sip:a@h", clock, expires=90)
    loc.put(b)
    assert loc.snapshot() == [b]
    assert b.expires_in(clock.now + 30) == 60
    assert b.expires_in(clock.now + 300) == 0


# ---- write-behind -------------------------------------------------------------------------
def test_flush_and_reload_into_a_fresh_service(tmp_path: Path, clock: FakeClock) -> None:
    store = Store.open(tmp_path)
    loc = LocationService(store, clock)
    flow = make(
        "sip:6140@198.51.100.7:40000;transport=tcp",
        clock,
        instance='"<urn:uuid:x>"',
        reg_id=2,
        conn_id=3,
        path=["<sip:edge.example.com;lr>"],
        q=0.7,
        user_agent="baresip",
        transport="tcp",
    )
    loc.put(flow)
    loc.put(make("sip:6140@192.0.2.10", clock))
    loc.put(make("sip:gone@h", clock))
    assert loc.flush() == 3
    assert loc.flush() == 0  # nothing dirty: nothing written
    loc.remove(AOR, "sip:gone@h")
    assert loc.flush() == 1

    fresh = LocationService(Store.open(tmp_path), clock)
    assert fresh.load() == 2
    reloaded = fresh.get(AOR, ('"<urn:uuid:x>"', 2))
    assert reloaded is not None
    assert reloaded.conn_id is None  # connections do not survive a restart
    assert (reloaded.path, reloaded.q, reloaded.user_agent, reloaded.transport) == (
        ["<sip:edge.example.com;lr>"],
        0.7,
        "baresip",
        "tcp",
    )
    assert reloaded.expires_at == flow.expires_at and reloaded.contact == flow.contact
    assert fresh.get(AOR, "sip:gone@h") is None


def test_load_skips_and_deletes_expired_bindings(tmp_path: Path, clock: FakeClock) -> None:
    loc = LocationService(Store.open(tmp_path), clock)
    loc.put(make("sip:old@h", clock, expires=10))
    loc.put(make("sip:new@h", clock, expires=100))
    loc.flush()
    clock.now += 50
    fresh = LocationService(Store.open(tmp_path), clock)
    assert fresh.load() == 1
    assert len(Store.open(tmp_path).load_bindings()) == 1


async def test_background_task_flushes_within_the_interval(
    tmp_path: Path, clock: FakeClock
) -> None:
    loc = LocationService(Store.open(tmp_path), clock)
    await loc.start(flush_interval_s=0.05, purge_interval_s=0.05)
    try:
        loc.put(make("sip:a@h", clock))
        loc.put(make("sip:expired@h", clock, expires=-1))
        await asyncio.sleep(0.2)
        on_disk = {b.contact for b in Store.open(tmp_path).load_bindings()}
        assert on_disk == {"sip:a@h"}  # flushed, and the expired one purged
        assert loc.count() == 1
    finally:
        await loc.stop()


async def test_stop_does_a_final_flush(tmp_path: Path, clock: FakeClock) -> None:
    loc = LocationService(Store.open(tmp_path), clock)
    await loc.start(flush_interval_s=1.0, purge_interval_s=60)
    loc.put(make("sip:a@h", clock))
    await loc.stop()
    assert [b.contact for b in Store.open(tmp_path).load_bindings()] == ["sip:a@h"]


async def test_flush_interval_may_not_exceed_one_second(clock: FakeClock) -> None:
    loc = LocationService(None, clock)
    with pytest.raises(ValueError, match="flush_interval_s"):
        await loc.start(flush_interval_s=1.5)


def test_a_failed_flush_is_retried(tmp_path: Path, clock: FakeClock) -> None:
    store = Store.open(tmp_path)
    loc = LocationService(store, clock)
    loc.put(make("sip:a@h", clock))
    blocker = Store.open(tmp_path)
    blocker.conn.execute("PRAGMA busy_timeout = 0")
    store.conn.execute("PRAGMA busy_timeout = 0")
    blocker.conn.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        loc.flush()
    blocker.conn.rollback()
    assert loc.flush() == 1
    assert [b.contact for b in blocker.load_bindings()] == ["sip:a@h"]


# ---- memory -------------------------------------------------------------------------------
def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        resident_pages = int(handle.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_hundred_thousand_bindings_fit_in_300_mb(clock: FakeClock) -> None:
    before = rss_mb()
    loc = LocationService(None, clock)
    for i in range(100_000):
        loc.put(
            Binding(
                aor=f"sip:{100000 + i}@example.com",
                contact=f"sip:{100000 + i}@10.{i >> 16}.{(i >> 8) & 255}.{i & 255}:5060;transport=tcp;ob",
                expires_at=clock.now + 3600,
                call_id=f"{i:08x}-5f2a9c1e4b7d@10.0.0.1",
                cseq=i,
                transport="tcp",
                source_host=f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}",
                source_port=5060,
                conn_id=i,
                user_agent="baresip v3.10.1 (x86_64/linux)",
                registered_at=clock.now,
            )
        )
    after = rss_mb()
    assert loc.count() == 100_000
    print(f"100,000 bindings: +{after - before:.0f} MB, process RSS {after:.0f} MB")
    # What the bindings add, not the test process's RSS (which carries whatever the test
    # files before this one in the same xdist worker left): a server starts at ~70 MB,
    # so 100,000 bindings in 300 MB leave them 230 MB.
    assert after - before < 230, f"100,000 bindings took {after - before:.0f} MB"


def test_dataclasses_replace_on_a_binding_compiled_and_pure() -> None:
    """Binding is a mypyc-compiled dataclass; replace() gives a refreshed binding whose
    cached key follows the new contact."""
    import dataclasses

    old = Binding("sip:6140@example.com", "sip:6140@192.0.2.1:5060", 100.0, q=0.5, call_id="c1", cseq=3)
    assert old.key_text() == normalise_contact("sip:6140@192.0.2.1:5060")
    refreshed = dataclasses.replace(old, expires_at=200.0, cseq=4)
    assert type(refreshed) is Binding
    assert (refreshed.expires_at, refreshed.cseq, refreshed.q, refreshed.call_id) == (200.0, 4, 0.5, "c1")
    assert refreshed.key_text() == old.key_text() and old.expires_at == 100.0
    moved = dataclasses.replace(old, contact="sip:6140@192.0.2.2:5060")
    assert moved.key_text() == normalise_contact("sip:6140@192.0.2.2:5060")
    assert refreshed == dataclasses.replace(old, expires_at=200.0, cseq=4)
