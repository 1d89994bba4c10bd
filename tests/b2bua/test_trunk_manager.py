"""The trunk manager's driver (vivait_sip/b2bua/trunks.py) against a fake host: what it
sends through `Host.sip`, how it reads the UA events of its requests, reload, stop, and
what the call code gets (`candidates`, `trunk_for_source`, accounting, status, metrics).
No sockets; the loop only runs its tasks (no timer is waited for)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from vivait_sip.b2bua import trunks as trunks_module
from vivait_sip.b2bua.config import TrunkConfig
from vivait_sip.b2bua.slots import SharedSlots
from vivait_sip.b2bua.trunks import TrunkManager, TrunkRoute
from vivait_sip.contract import Host
from vivait_sip.sip.auth import Credentials
from vivait_sip.sip.message import Response, parse_message
from vivait_sip.sip.peer import Peer
from vivait_sip.sip.ua import RequestFailed, ResponseReceived
from vivait_sip.sip.uri import SipUri

OWNER = "b2bua"


@dataclass
class Sent:
    request_id: int
    method: str
    uri: str
    kw: dict[str, Any]

    def header(self, name: str) -> str | None:
        return dict(self.kw["headers"]).get(name)


@dataclass
class FakeSip:
    sent: list[Sent] = field(default_factory=list)
    on_send: Callable[[Sent], None] | None = None  # e.g. report a transport failure at once
    ids: Iterator[int] = field(default_factory=lambda: iter(range(1, 10**6)))

    def send_request(self, method: str, uri: str | SipUri, **kw: Any) -> int:
        sent = Sent(next(self.ids), method, str(uri), kw)
        self.sent.append(sent)
        if self.on_send is not None:
            self.on_send(sent)
        return sent.request_id

    def local_address(self, peer: Peer) -> tuple[str, int]:
        return "192.0.2.1", 5060

    def contact_for(self, peer: Peer, user: str | None = None) -> str:
        return f"<sip:{user}@192.0.2.1:5060>"

    def of(self, method: str) -> list[Sent]:
        return [s for s in self.sent if s.method == method]


@dataclass
class FakeHost:
    sip: FakeSip = field(default_factory=FakeSip)
    dns: dict[str, list[Peer]] = field(default_factory=dict)
    resolved: list[str] = field(default_factory=list)
    worker_index: int = 0
    worker_count: int = 1
    is_primary: bool = True

    async def resolve(self, uri: SipUri) -> list[Peer]:
        self.resolved.append(str(uri))
        if uri.host in self.dns:
            return self.dns[uri.host]
        if uri.host[0].isdigit():
            return [Peer(uri.transport or "udp", uri.host, uri.port or 5060)]
        return []


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """No listeners to wait for, and nobody answers the un-REGISTERs of most tests."""
    monkeypatch.setattr(trunks_module, "START_DELAY_S", 0)
    monkeypatch.setattr(trunks_module, "UNREGISTER_WAIT_S", 0.01)


def trunk(name: str = "pri", **overrides: Any) -> TrunkConfig:
    return TrunkConfig.model_validate({"name": name, "host": "10.0.0.5", "options_interval_s": 30, **overrides})


CARRIER = {
    "host": "gw.example.com", "registration": True, "options_interval_s": 0,
    "auth": {"username": "acct", "password": "pw", "realm": "carrier"},
}


def response(status: int, *headers: str) -> Response:
    text = "\r\n".join([
        f"SIP/2.0 {status} Whatever",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1",
        "From: <sip:a@b>;tag=1",
        "To: <sip:a@b>;tag=2",
        "Call-ID: x",
        "CSeq: 1 OPTIONS",
        *headers,
        "Content-Length: 0",
    ]) + "\r\n\r\n"
    msg = parse_message(text.encode())
    assert isinstance(msg, Response)
    return msg


def answer(manager: TrunkManager, sent: Sent, status: int, *headers: str) -> bool:
    return manager.on_ua_event(ResponseReceived(OWNER, sent.request_id, None, response(status, *headers)))


async def started(*configs: TrunkConfig, host: FakeHost | None = None) -> tuple[TrunkManager, FakeHost]:
    host = host or FakeHost(dns={"gw.example.com": [Peer("udp", "192.0.2.7", 5060), Peer("udp", "192.0.2.8", 5060)]})
    manager = TrunkManager(list(configs), cast(Host, host), OWNER)
    await manager.start()
    await settle()
    return manager, host


async def settle() -> None:
    """Let the manager's task run what is due now."""
    for _ in range(5):
        await asyncio.sleep(0)


def state_of(manager: TrunkManager, name: str) -> dict[str, Any]:
    return cast(dict[str, Any], manager.status()[name])


async def test_start_resolves_then_probes_and_registers() -> None:
    manager, host = await started(trunk(), trunk("carrier", **CARRIER))
    # an IP trunk's transport is forced; a name without port or transport is left to
    # NAPTR/SRV (RFC 3263 §4.1)
    assert sorted(host.resolved) == ["sip:10.0.0.5;transport=udp", "sip:gw.example.com"]
    [options] = host.sip.of("OPTIONS")
    assert options.uri == "sip:10.0.0.5"
    assert options.kw["owner"] == OWNER
    assert options.kw["destinations"] == (Peer("udp", "10.0.0.5", 5060),)
    assert options.kw["from_"] == "<sip:vivait-sip@192.0.2.1>"
    [register] = host.sip.of("REGISTER")
    assert register.uri == "sip:gw.example.com"
    assert register.kw["from_"] == register.kw["to"] == "<sip:acct@gw.example.com>"
    assert register.header("Contact") == "<sip:acct@192.0.2.1:5060>"
    assert register.header("Expires") == "600"
    assert register.kw["credentials"] == Credentials("acct", "pw", realm="carrier")
    assert len(register.kw["destinations"]) == 2  # both SRV/A targets, for the UA's failover
    assert state_of(manager, "pri")["state"] == "unknown"
    await manager.stop()


async def test_options_answers_drive_the_state_and_only_our_events_are_consumed() -> None:
    manager, host = await started(trunk())
    [options] = host.sip.of("OPTIONS")
    assert manager.on_ua_event(ResponseReceived("other", options.request_id, None, response(200))) is False
    assert manager.on_ua_event(ResponseReceived(OWNER, 999, None, response(200))) is False
    assert answer(manager, options, 180) is True  # a provisional: ours, not the outcome
    assert state_of(manager, "pri")["state"] == "unknown"
    assert answer(manager, options, 200) is True
    assert state_of(manager, "pri")["state"] == "up"
    assert answer(manager, options, 200) is False  # finished: no longer ours
    await manager.stop()


@pytest.mark.parametrize(("status", "alive"), [(200, True), (404, True), (401, True), (408, False), (503, False), (502, False)])
async def test_which_answers_prove_a_trunk_alive(status: int, alive: bool) -> None:
    manager, host = await started(trunk(down_after=1))
    answer(manager, host.sip.of("OPTIONS")[0], status)
    assert state_of(manager, "pri")["state"] == ("up" if alive else "down")
    await manager.stop()


async def test_a_failure_reported_before_send_request_returns_is_ours() -> None:
    host = FakeHost()
    manager: TrunkManager | None = None

    def refuse(sent: Sent) -> None:  # a refused connect reported within send_request
        assert manager is not None
        assert manager.on_ua_event(RequestFailed(OWNER, sent.request_id, 503, "Service Unavailable")) is True

    host.sip.on_send = refuse
    manager = TrunkManager([trunk(down_after=1)], cast(Host, host), OWNER)
    await manager.start()
    await settle()
    assert state_of(manager, "pri")["state"] == "down"
    assert state_of(manager, "pri")["counters"] == {"options_failed": 1}
    await manager.stop()


async def test_registration_takes_the_granted_expiry_of_our_contact() -> None:
    manager, host = await started(trunk("carrier", **CARRIER))
    [register] = host.sip.of("REGISTER")
    assert state_of(manager, "carrier")["registered"] is False
    answer(manager, register, 200, "Contact: <sip:other@192.0.2.9>;expires=3000",
           "Contact: <sip:acct@192.0.2.1:5060>;expires=120", "Expires: 900")
    status = state_of(manager, "carrier")
    assert status["registered"] is True
    assert status["registration"]["state"] == "registered"
    assert 119 <= status["registration"]["expires_in_s"] <= 120
    await manager.stop()


async def test_a_423_is_retried_at_once_with_min_expires() -> None:
    manager, host = await started(trunk("carrier", **CARRIER))
    answer(manager, host.sip.of("REGISTER")[0], 423, "Min-Expires: 1800")
    await settle()
    registers = host.sip.of("REGISTER")
    assert [r.header("Expires") for r in registers] == ["600", "1800"]
    answer(manager, registers[1], 200)  # no expiry in the answer: what we asked for
    assert state_of(manager, "carrier")["registration"]["expires_in_s"] == pytest.approx(1800, abs=1)
    await manager.stop()


async def test_a_failed_registration_waits_for_its_back_off() -> None:
    manager, host = await started(trunk("carrier", **CARRIER))
    manager.on_ua_event(RequestFailed(OWNER, host.sip.of("REGISTER")[0].request_id, 408, "Request Timeout"))
    await settle()
    assert len(host.sip.of("REGISTER")) == 1
    assert state_of(manager, "carrier")["registration"] == {"state": "failed", "expires_in_s": None, "last_status": 408}
    await manager.stop()
    assert len(host.sip.of("REGISTER")) == 1  # nothing to un-register


async def test_stop_unregisters_with_expires_0_and_waits_for_the_answer() -> None:
    manager, host = await started(trunk("carrier", **CARRIER))
    answer(manager, host.sip.of("REGISTER")[0], 200)

    def answered(sent: Sent) -> None:
        asyncio.get_running_loop().call_soon(answer, manager, sent, 200)

    host.sip.on_send = answered
    await manager.stop()
    unregister = host.sip.of("REGISTER")[-1]
    assert unregister.header("Expires") == "0"
    assert unregister.header("Contact") == "<sip:acct@192.0.2.1:5060>"
    assert unregister.kw["destinations"] == host.sip.of("REGISTER")[0].kw["destinations"]
    assert state_of(manager, "carrier")["counters"]["unregistered"] == 1


async def test_stop_does_not_wait_long_for_a_silent_far_end() -> None:
    manager, host = await started(trunk("carrier", **CARRIER))
    answer(manager, host.sip.of("REGISTER")[0], 200)
    await manager.stop()  # the far end never answers: bounded by UNREGISTER_WAIT_S
    assert host.sip.of("REGISTER")[-1].header("Expires") == "0"


async def test_reload_keeps_unchanged_trunks_and_restarts_changed_addresses() -> None:
    manager, host = await started(trunk("a"), trunk("b"), trunk("c", **CARRIER))
    for sent in host.sip.of("OPTIONS"):
        answer(manager, sent, 200)
    answer(manager, host.sip.of("REGISTER")[0], 200)
    assert manager.acquire("b")
    manager.reload([trunk("a", down_after=5, max_calls=3), trunk("b", host="10.0.0.6"), trunk("d")])
    await settle()
    status = manager.status()
    assert list(status) == ["a", "b", "d"]
    assert state_of(manager, "a")["state"] == "up"  # thresholds changed: health kept
    assert state_of(manager, "a")["max_calls"] == 3
    assert state_of(manager, "b")["state"] == "unknown"  # a new address: checked afresh...
    assert state_of(manager, "b")["calls"] == 1  # ...with its calls in progress still counted
    assert state_of(manager, "b")["destinations"] == ["udp:10.0.0.6:5060"]
    assert host.sip.of("REGISTER")[-1].header("Expires") == "0"  # c removed: un-registered
    # b and d are probed once resolved, not failed for lack of an address meanwhile
    assert [s.kw["destinations"][0].host for s in host.sip.of("OPTIONS")[2:]] == ["10.0.0.6", "10.0.0.5"]
    assert "options_failed" not in state_of(manager, "b")["counters"]
    manager.release("c")  # a call on a removed trunk ending: nothing to do
    await manager.stop()


async def test_candidates_in_order_skipping_down_full_and_unknown_trunks() -> None:
    manager, _ = await started(
        trunk("a", max_calls=1), trunk("b", down_after=1), trunk("c", host="gw.example.com", port=5070),
        trunk("d", host="nowhere.example.com"), trunk("e", **CARRIER),
    )
    assert [r.name for r in manager.candidates(["e", "c", "a", "b", "zz", "d"])] == ["e", "c", "a", "b"]
    assert manager.acquire("a") and not manager.acquire("a")
    manager.report_failure("b", 503)
    assert [r.name for r in manager.candidates(["a", "b", "c"])] == ["c"]
    manager.release("a")
    assert [r.name for r in manager.candidates(["a", "b"])] == ["a"]
    [c] = manager.candidates(["c"])
    assert c == TrunkRoute(
        name="c", destinations=(Peer("udp", "192.0.2.7", 5060), Peer("udp", "192.0.2.8", 5060)),
        request_uri_host="gw.example.com:5070", credentials=None, from_domain="192.0.2.1",
    )
    [e] = manager.candidates(["e"])
    assert (e.credentials, e.from_domain) == (Credentials("acct", "pw", realm="carrier"), "gw.example.com")
    assert not manager.acquire("zz")
    await manager.stop()


async def test_trunk_for_source_by_network_most_specific_first() -> None:
    manager = TrunkManager(
        [trunk("wide", networks=["10.0.0.0/8"]), trunk("narrow", networks=["10.0.0.5", "2001:db8::/32"])],
        cast(Host, FakeHost()), OWNER,
    )
    assert manager.trunk_for_source("10.0.0.5") == "narrow"
    assert manager.trunk_for_source("10.9.9.9") == "wide"
    assert manager.trunk_for_source("::ffff:10.0.0.5") == "narrow"  # IPv4 on a dual-stack socket
    assert manager.trunk_for_source("[2001:db8::1]") == "narrow"
    assert manager.trunk_for_source("192.0.2.1") is None
    assert manager.trunk_for_source("gw.example.com") is None


async def test_metrics_and_status_count_calls_and_checks() -> None:
    manager, host = await started(trunk("pri", max_calls=1), trunk("c", **CARRIER))
    answer(manager, host.sip.of("OPTIONS")[0], 200)
    answer(manager, host.sip.of("REGISTER")[0], 200)
    manager.acquire("pri")
    manager.acquire("pri")
    manager.report_failure("pri", 503)
    lines = manager.metrics()
    for line in [
        'vivait_trunk_up{trunk="pri"} 1',
        'vivait_trunk_state{trunk="pri",state="up"} 1',
        'vivait_trunk_state{trunk="c",state="unknown"} 1',
        'vivait_trunk_registered{trunk="c"} 1',
        'vivait_trunk_calls{trunk="pri"} 1',
        'vivait_trunk_calls_total{trunk="pri",result="placed"} 1',
        'vivait_trunk_calls_total{trunk="pri",result="limit"} 1',
        'vivait_trunk_calls_total{trunk="pri",result="failed"} 1',
        'vivait_trunk_options_total{trunk="pri",result="ok"} 1',
    ]:
        assert line in lines, line
    assert not any(line.startswith('vivait_trunk_registered{trunk="pri"') for line in lines)
    assert all(line.startswith("# ") or line.startswith("vivait_trunk_") for line in lines)
    status = state_of(manager, "pri")
    assert status["counters"] == {
        "calls_failed": 1, "calls_failed_503": 1, "calls_limit": 1, "calls_placed": 1, "options_ok": 1,
    }
    await manager.stop()


async def test_an_unknown_request_outside_our_sends_is_left_to_the_call_code() -> None:
    manager, _ = await started(trunk())
    assert manager.on_ua_event(RequestFailed(OWNER, 12345, 408, "Request Timeout")) is False
    await manager.stop()


async def test_with_workers_only_the_primary_registers_and_max_calls_is_the_nodes(tmp_path: Path) -> None:
    config = trunk("c", max_calls=3, **{**CARRIER, "host": "10.0.0.7", "options_interval_s": 30})
    first, _ = await started(config)
    second, host = await started(config, host=FakeHost(worker_index=1, worker_count=2, is_primary=False))
    shared = [SharedSlots.create(tmp_path / "slots", 2), SharedSlots(tmp_path / "slots", 1)]
    first.use_slots(shared[0])
    second.use_slots(shared[1])
    try:
        assert [s.method for s in host.sip.sent] == ["OPTIONS"]  # health is checked here too
        # all three in worker 1, whatever the Call-IDs' hash; then none left for worker 0
        assert [second.acquire("c") for _ in range(4)] == [True, True, True, False]
        assert not first.acquire("c") and not first.candidates(["c"])
        status = state_of(second, "c")
        assert (status["registration"], status["registered"], status["max_calls"], status["calls"]) == (None, False, 3, 3)
        assert state_of(first, "c")["calls"] == 3  # the node's count, in either worker's status
        second.release("c")
        assert first.acquire("c") and state_of(second, "c")["calls"] == 3
        first.reload([])  # removed while its calls are up: they still give their slots back
        first.release("c")
        assert state_of(second, "c")["calls"] == 2
    finally:
        await first.stop()
        await second.stop()
        for slots in shared:
            slots.close()
    assert [s.method for s in host.sip.sent] == ["OPTIONS"]
