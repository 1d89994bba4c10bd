"""Services features offer across worker processes, on an in-memory pair of hosts:
mdflow admission at worker 0 (no RPC timeout, withdrawal, a lost worker's calls leave the
queues) and locating an AOR's contacts at the worker that owns it.  Every message goes
through the one encoding (contract.encode_message/decode_message) as on the socketpairs."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from flow.helpers import config as mdflow_config
from flow.helpers import flow

from vivait_sip.config import config_from_data
from vivait_sip.contract import CallHandler, Feature, WorkerMessage, decode_message, encode_message
from vivait_sip.flow.feature import MdflowFeature
from vivait_sip.flow.service import MdflowService
from vivait_sip.registrar.feature import Contact, RegistrarFeature
from vivait_sip.registrar.location import Binding
from vivait_sip.sip.message import Request
from vivait_sip.sip.peer import Peer
from vivait_sip.workers import owner_index

F = Any


class FakeHost:
    """Enough of contract.Host for features in one of `count` workers of one process."""

    def __init__(self, index: int, count: int, data_dir: Path, raw: dict[str, Any]) -> None:
        self.config = config_from_data({"data_dir": str(data_dir), **raw})
        self.config_path: str | None = None
        self.data_dir = data_dir
        self.demo = False
        self.banner: list[str] = []
        self.counters: Counter[str] = Counter()
        self.worker_index = index
        self.worker_count = count
        self.secret = b"s" * 32
        self.peers: dict[int, FakeHost] = {}
        self.features: list[Feature[Any]] = []
        self.sent: list[WorkerMessage] = []

    @property
    def is_primary(self) -> bool:
        return self.worker_index == 0

    def owner_of(self, key: str) -> int:
        return owner_index(key, self.worker_count)

    def owner_of_message(self, req: Request) -> int:
        return self.owner_of(req.call_id)

    def send_to_worker(self, worker: int, msg: WorkerMessage) -> None:
        wire = encode_message(msg)  # what crosses the socketpair
        self.sent.append(msg)
        target = self.peers[worker]
        asyncio.get_running_loop().call_soon(target.deliver, self.worker_index, decode_message(wire))

    def deliver(self, source: int, msg: WorkerMessage) -> None:
        for feature in self.features:
            if type(msg) in feature.messages:
                feature.on_worker_message(source, msg)

    def broadcast(self, msg: WorkerMessage) -> None:
        for index in self.peers:
            if index != self.worker_index:
                self.send_to_worker(index, msg)

    def on_call(self, name: str, handler: CallHandler) -> None:
        pass

    async def call_workers(self, name: str, **args: Any) -> list[Any]:
        return []

    def is_local_domain(self, host: str) -> bool:
        return host == "127.0.0.1"

    def send_raw(self, data: bytes, peer: Peer) -> None:
        pass

    def feature(self, cls: type[F]) -> F | None:
        return next((f for f in self.features if isinstance(f, cls)), None)


def pair(tmp_path: Path, raw: dict[str, Any], *classes: type[Feature[Any]]) -> tuple[FakeHost, FakeHost]:
    hosts = (FakeHost(0, 2, tmp_path, raw), FakeHost(1, 2, tmp_path, raw))
    for host in hosts:
        host.peers = {0: hosts[0], 1: hosts[1]}
        host.features = [cls(host) for cls in classes]  # type: ignore[arg-type]
    return hosts


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_call_of_another_worker_waits_in_the_flow_queue_then_is_released(tmp_path: Path) -> None:
    raw = {"mdflow": mdflow_config(flow("F", tasa_sal_seg=1, dnis_max=1)).model_dump()}
    zero, one = pair(tmp_path, raw, MdflowFeature)
    now = [100.0]
    md0 = zero.feature(MdflowFeature)
    md1 = one.feature(MdflowFeature)
    assert md0 is not None and md1 is not None and md1.service is None
    md0.service = MdflowService(md0.settings, clock=lambda: now[0])
    outcomes: list[tuple[str, str]] = []
    md1.admit("F", "900", lambda o: outcomes.append(("first", o)))
    md1.admit("F", "900", lambda o: outcomes.append(("second", o)))  # congested: queued
    md1.admit("F", "901", lambda o: outcomes.append(("third", o)))  # dnis_max reached: agujero
    await settle()
    assert outcomes == [("first", "ok"), ("third", "agujero")]
    assert md1.pending == 1
    now[0] += 1.05  # a second later the queue may release one call
    md0.service.step()
    await settle()
    assert outcomes[-1] == ("second", "ok") and md1.pending == 0
    kinds = [m.kind for m in one.sent]
    assert kinds == ["mdflow.admit"] * 3


async def test_withdrawn_and_orphaned_calls_leave_the_queue(tmp_path: Path) -> None:
    raw = {"mdflow": mdflow_config(flow("F", tasa_sal_seg=1, dnis_max=5)).model_dump()}
    zero, one = pair(tmp_path, raw, MdflowFeature)
    md0 = zero.feature(MdflowFeature)
    md1 = one.feature(MdflowFeature)
    assert md0 is not None and md1 is not None and md0.service is not None
    got: list[str] = []
    md1.admit("F", "900", got.append)
    tickets = [md1.admit("F", str(900 + n), got.append) for n in range(3)]
    await settle()
    assert got == ["ok"]
    md1.withdraw(tickets[0])  # the caller hung up while queued (CANCEL)
    await settle()
    queued = sum(f.queued for f in md0.service.snapshot().flows)
    assert queued == 2
    md0.on_worker_lost(1)  # worker 1's link dropped: its calls leave the queues
    assert sum(f.queued for f in md0.service.snapshot().flows) == 0
    assert got == ["ok"]  # nobody is told: the worker is gone


async def test_an_unknown_flow_is_an_error_outcome_not_a_hang(tmp_path: Path) -> None:
    _zero, one = pair(tmp_path, {}, MdflowFeature)
    md1 = one.feature(MdflowFeature)
    assert md1 is not None
    got: list[str] = []
    md1.admit("nope", "1", got.append)
    await settle()
    assert got == ["error"]


async def test_contacts_are_located_at_the_worker_owning_the_aor(tmp_path: Path) -> None:
    zero, one = pair(tmp_path, {}, RegistrarFeature)
    user = next(u for u in (str(n) for n in range(6140, 6200)) if owner_index(u, 2) == 0)
    aor = f"sip:{user}@127.0.0.1"
    reg0 = zero.feature(RegistrarFeature)
    reg1 = one.feature(RegistrarFeature)
    assert reg0 is not None and reg1 is not None
    for n, q in ((1, 0.5), (2, 1.0)):
        reg0.location.put(
            Binding(aor, f"sip:6140@192.0.2.{n}:5062", 4e9, q=q, transport="tcp", source_host=f"198.51.100.{n}",
                    source_port=40000 + n, conn_id=7 + n, path=["<sip:edge.example;lr>"])
        )
    found: list[list[Contact]] = []
    reg0.location.put(Binding(f"sip:{user}@pbx.example", "sip:6140@192.0.2.9:5062", 4e9, q=0.1))  # another domain
    reg1.locate(user, found.append)  # asked from worker 1: a message to worker 0 and back
    reg0.locate(user, found.append)  # asked at the owner: answered locally, later
    assert found == []
    await settle()
    assert found[0] == found[1]
    assert [c.uri for c in found[0]] == ["sip:6140@192.0.2.2:5062", "sip:6140@192.0.2.1:5062", "sip:6140@192.0.2.9:5062"]
    assert found[0][0].peer == Peer("tcp", "198.51.100.2", 40002, 9)
    assert found[0][0].path == ("<sip:edge.example;lr>",)
    reg1.locate(user, found.append)
    reg1.on_worker_lost(0)  # the owner went away before answering
    assert found[-1] == []
    for reg in (reg0, reg1):
        await reg.stop()
