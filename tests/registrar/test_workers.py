"""`serve --workers 2`: two processes behind one UDP socket, state partitioned by owner.

Proves with the real server: registrations land in the worker that owns their AOR
whichever process reads the datagram; the admin API sees every worker's bindings;
responses to TCP connections (held by worker 0) come back from worker 1; flow failure,
bans and unbans cross processes; SIGTERM, kill -9 and a dead worker behave; SIPp
registers against it with no failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Server, free_port, loopback_args
from reg_helpers import Phone, ctl, registrations

from vivait_sip.workers import owner_index

pytestmark = pytest.mark.timeout(120)

USERS = [{"number": str(n), "password": f"pw-{n}"} for n in range(7000, 7024)]
NOBODY = "7099"  # a user that never registers: calls to it fail at once (480)
REGISTRAR = {"users": [*USERS, {"number": NOBODY, "password": "pw-nobody"}], "algorithms": ["MD5"]}


def start(tmp: Path, workers: int = 2, extra: dict[str, object] | None = None) -> Server:
    config: dict[str, object] = {"registrar": REGISTRAR, **(extra or {})}
    tmp.mkdir(parents=True, exist_ok=True)
    return Server(tmp, config, [*loopback_args(http=False, tls=False), "--workers", str(workers)]).start()


def worker_pids(server: Server) -> list[int]:
    line = next(x for x in server.output if x.startswith("workers "))
    return [int(p) for p in re.findall(r"\d+", line.split("(pids", 1)[1])]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours that exited counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still running"
        time.sleep(0.05)


def status(server: Server) -> dict[str, object]:
    out = ctl(server, "status", "--json")
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def aor(number: str) -> str:
    return f"sip:{number}@127.0.0.1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # Loopback is not trusted here (only 127.0.0.9), so 127.0.0.21 can be banned.
    srv = start(tmp_path_factory.mktemp("workers"), extra={"security": {"trusted_networks": ["127.0.0.9/32"]}})
    yield srv
    srv.kill()


def test_the_aors_used_here_are_owned_by_both_workers() -> None:
    owners = {owner_index(u["number"], 2) for u in USERS}
    assert owners == {0, 1}


def test_start_line_and_status_show_two_processes(server: Server) -> None:
    pids = worker_pids(server)
    assert len(pids) == 2 and all(alive(p) for p in pids)
    st = status(server)
    rows = st["workers"]
    assert isinstance(rows, list)
    assert [r["index"] for r in rows] == [0, 1]
    assert [r["pid"] for r in rows] == pids


def test_registrations_spread_over_workers_and_admin_sees_all(server: Server) -> None:
    port = server.sip_port("udp")
    phones = [Phone(port, u["number"], u["password"], algorithm="MD5") for u in USERS]
    try:
        for p in phones:
            assert p.register(600).status == 200
        # Refreshes with a new nonce and the old Call-ID reach the same owner (CSeq order).
        for p in phones[:6]:
            assert p.register(600).status == 200
        listed = {b["aor"] for b in registrations(server)}
        assert listed == {aor(u["number"]) for u in USERS}
        for u in USERS[:3]:
            assert [b["aor"] for b in registrations(server, aor(u["number"]))] == [aor(u["number"])]
        st = status(server)
        registrar = st["registrar"]
        assert isinstance(registrar, dict)
        assert registrar["bindings"] == len(USERS)
        counters = st["counters"]
        assert isinstance(counters, dict)
        # Whichever process read each datagram, the AORs of the other one were handed over.
        assert counters["forwarded_to_worker"] > 0
        assert counters.get("internal_errors", 0) == 0
    finally:
        for p in phones:
            p.close()


def test_unregister_reaches_the_owner(server: Server) -> None:
    port = server.sip_port("udp")
    user = next(u for u in USERS[10:] if owner_index(u["number"], 2) == 1)
    p = Phone(port, user["number"], user["password"], algorithm="MD5")
    try:
        assert p.register(600).status == 200
        out = ctl(server, "unregister", aor(user["number"]))
        assert out.returncode == 0, out.stderr
        assert registrations(server, aor(user["number"])) == []
    finally:
        p.close()


def test_tcp_flow_owned_by_worker_1_answers_over_worker_0_connection(server: Server) -> None:
    """Worker 0 holds the connection; the owner (worker 1) answers through it; when the
    connection closes, worker 1 removes the flow's binding."""
    user = next(u for u in USERS if owner_index(u["number"], 2) == 1)
    number = user["number"]
    p = Phone(server.sip_port("tcp"), number, user["password"], transport="tcp", algorithm="MD5")
    ob = p.contact() + ';+sip.instance="<urn:uuid:00000000-0000-0000-0000-00000000aaaa>";reg-id=1'
    reply = p.register(600, contacts=[ob], extra=[("Supported", "outbound, path")])
    assert reply.status == 200 and reply.get("Require") == "outbound"
    assert any(b["transport"] == "tcp" and b["reg_id"] == 1 for b in registrations(server, aor(number)))
    p.close()
    deadline = time.monotonic() + 5
    while any(b["transport"] == "tcp" for b in registrations(server, aor(number))):
        assert time.monotonic() < deadline, "flow binding not removed in worker 1"
        time.sleep(0.05)


def test_bans_are_decided_once_and_enforced_by_every_worker(server: Server) -> None:
    port = server.sip_port("udp")
    victim_users = USERS[12:20]  # AORs of both workers: failures counted in both
    assert {owner_index(u["number"], 2) for u in victim_users} == {0, 1}
    attackers = [Phone(port, u["number"], "wrong", source="127.0.0.21", algorithm="MD5") for u in victim_users]
    try:
        for i in range(20):
            reply = attackers[i % len(attackers)].register(600)
            assert reply.status == 401, (i, reply.status)
        # Worker 0 decided the ban (it counts every worker's failures) and broadcast it.
        out = ctl(server, "bans", "--json")
        assert "127.0.0.21" in out.stdout
        # Banned everywhere: 8 AORs, both owners, and whichever process reads the datagram
        # (the broadcast may still be on its way to worker 1 for a few milliseconds).
        for p in attackers:
            deadline = time.monotonic() + 2
            status = p.send(p.request("REGISTER", aor(p.user), [("Contact", p.contact())])).status
            while status != 403 and time.monotonic() < deadline:
                time.sleep(0.05)
                status = p.send(p.request("REGISTER", aor(p.user), [("Contact", p.contact())])).status
            assert status == 403
        assert ctl(server, "unban", "127.0.0.21").returncode == 0
        for p in attackers:
            assert p.send(p.request("REGISTER", aor(p.user), [("Contact", p.contact())])).status == 401
        logs = server.collect_output(0.5)
        assert sum("event=auth_ban source=127.0.0.21" in line for line in logs) == 1
    finally:
        for p in attackers:
            p.close()


def test_reload_reaches_every_worker(server: Server) -> None:
    """A user added to the config file and reloaded can register on an AOR of either worker."""
    config = json.loads(server.config_path.read_text())
    added = [{"number": str(n), "password": f"pw-{n}"} for n in range(7100, 7110)]
    assert {owner_index(u["number"], 2) for u in added} == {0, 1}
    config["registrar"]["users"] = [*REGISTRAR["users"], *added]  # type: ignore[misc]
    server.config_path.write_text(json.dumps(config))
    assert ctl(server, "reload").returncode == 0
    port = server.sip_port("udp")
    for u in added:
        p = Phone(port, u["number"], u["password"], algorithm="MD5")
        try:
            assert p.register(600).status == 200, u
        finally:
            p.close()


def test_sipp_registers_against_two_workers(tmp_path: Path) -> None:
    assert shutil.which("sipp"), "sipp is required (Debian package sip-tester)"
    srv = start(tmp_path / "srv")
    try:
        csv = tmp_path / "users.csv"
        csv.write_text("SEQUENTIAL\n" + "".join(f"{u['number']};127.0.0.1;[authentication username={u['number']} password={u['password']}]\n" for u in USERS))
        scenario = Path(__file__).resolve().parents[2] / "bench" / "reg_auth.xml"
        run = subprocess.run(
            ["sipp", f"127.0.0.1:{srv.sip_port('udp')}", "-sf", str(scenario), "-inf", str(csv), "-i", "127.0.0.1",
             "-p", str(free_port()), "-r", "200", "-m", "600", "-nostdin", "-timeout", "30s", "-timeout_error", "-trace_stat",
             "-stf", str(tmp_path / "stat.csv")],
            capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
        )
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        rows = (tmp_path / "stat.csv").read_text().splitlines()
        stats = dict(zip(rows[0].split(";"), rows[-1].split(";"), strict=False))
        assert int(stats["SuccessfulCall(C)"]) == 600 and int(stats["FailedCall(C)"]) == 0
        assert {b["aor"] for b in registrations(srv)} == {aor(u["number"]) for u in USERS}
    finally:
        assert srv.stop() == 0


def test_kill_9_of_worker_0_stops_worker_1_and_no_binding_is_lost(tmp_path: Path) -> None:
    srv = start(tmp_path)
    port = srv.sip_port("udp")
    phones = [Phone(port, u["number"], u["password"], algorithm="MD5") for u in USERS]
    try:
        for p in phones:
            assert p.register(600).status == 200
    finally:
        for p in phones:
            p.close()
    time.sleep(1.5)  # one flush interval (1 s) and then some
    _, pid1 = worker_pids(srv)
    srv.stop(signal.SIGKILL)
    wait_gone(pid1)  # worker 1 notices worker 0 is gone, flushes and exits
    for workers in (2, 1):  # the partition changes with the count; nothing is lost either way
        again = start(tmp_path, workers)
        try:
            assert {b["aor"] for b in registrations(again)} == {aor(u["number"]) for u in USERS}
        finally:
            assert again.stop() == 0


def test_sigterm_stops_both_and_a_dead_worker_stops_the_server(tmp_path: Path) -> None:
    srv = start(tmp_path / "a")
    _, pid1 = worker_pids(srv)
    assert srv.stop() == 0
    wait_gone(pid1)
    # A worker that dies (a bug, the OOM killer) takes the server down with exit 1, for
    # the service manager to restart it whole: half a registrar would lose half the AORs.
    srv = start(tmp_path / "b")
    _, pid1 = worker_pids(srv)
    os.kill(pid1, signal.SIGKILL)
    assert srv.proc is not None
    assert srv.proc.wait(15) == 1
    srv.collect_output()
    assert any("event=worker_exited index=1" in line for line in srv.output)


def call_id_owned_by(worker: int, prefix: str) -> str:
    return next(f"{prefix}-{n}" for n in range(1000) if owner_index(f"{prefix}-{n}", 2) == worker)


def test_a_captured_credential_replayed_with_another_call_id_is_rechallenged(server: Server) -> None:
    """Nonce-counts live in the worker a nonce was issued for: a replay landing in the
    other worker is challenged again, as one landing in the same worker always was."""
    caller = USERS[21]
    p = Phone(server.sip_port("udp"), caller["number"], caller["password"], algorithm="MD5")
    try:
        target = f"sip:{NOBODY}@127.0.0.1"
        headers = [("Contact", p.contact())]
        for worker in (0, 1):
            p.call_id = call_id_owned_by(worker, f"orig{worker}")
            first = p.send(p.request("INVITE", target, headers, ruri=target))
            assert first.status == 407
            auth = p.authorization("INVITE", target, first)
            ok = p.send(p.request("INVITE", target, headers, ruri=target, auth=auth))
            assert ok.status == 480  # authenticated; the callee is not registered
            for other in (0, 1):
                p.call_id = call_id_owned_by(other, f"replay{worker}")
                replay = p.send(p.request("INVITE", target, headers, ruri=target, auth=auth))
                assert replay.status == 407, (worker, other)
    finally:
        p.close()
