"""Enumeration resistance, source bans, trusted networks; the failure counters in isolation."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from harness import Server
from reg_helpers import Phone, ctl, start_server

from vivait_sip.config import SecurityConfig
from vivait_sip.registrar.security import SecurityMonitor

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # Loopback is deliberately NOT trusted here (only 127.0.0.9), so 127.0.0.2 can be banned.
    srv = start_server(
        tmp_path_factory.mktemp("srv"),
        {"algorithms": ["SHA-256", "MD5"],
         "users": [{"number": "6140", "password": "pw-6140"}, {"number": "6141", "password": "pw-6141"}]},
        security={"trusted_networks": ["127.0.0.9/32"], "ban_failures": 20, "ban_window_s": 60, "ban_duration_s": 600},
    )
    yield srv
    srv.kill()


def test_existing_and_missing_users_look_the_same(server: Server) -> None:
    port = server.sip_port("udp")
    shapes: dict[str, list[object]] = {}
    for user in ("6140", "7999"):  # 6140 exists, 7999 does not
        p = Phone(port, user, "wrong-password", source="127.0.0.6")
        try:
            target = f"sip:{user}@127.0.0.1"
            seen: list[object] = []
            # REGISTER without credentials, then with a guessed password.
            first = p.send(p.request("REGISTER", target, [("Contact", p.contact()), ("Expires", "600")]))
            seen.append(first.shape())
            seen.append(p.register(600).shape())
            # INVITE to the user, without and with guessed credentials (From = the user).
            first = p.send(p.request("INVITE", target, [("Contact", p.contact())], ruri=target))
            seen.append(first.shape())
            seen.append(p.invite(user).shape())
            shapes[user] = seen
        finally:
            p.close()
    assert shapes["6140"] == shapes["7999"]
    statuses = [s[0] for s in shapes["6140"]]  # type: ignore[index]
    assert statuses == [401, 401, 407, 407]


def test_twenty_bad_passwords_ban_the_source_not_others(server: Server) -> None:
    port = server.sip_port("udp")
    attacker = Phone(port, "6141", "pw-6141", source="127.0.0.2")
    victim_elsewhere = Phone(port, "6141", "pw-6141", source="127.0.0.3")
    try:
        for i in range(20):
            reply = attacker.register(600, password=f"guess-{i}")
            assert reply.status == 401, f"attempt {i}: {reply.status}"
        banned = attacker.send(attacker.request("REGISTER", "sip:6141@127.0.0.1", [("Contact", attacker.contact())]))
        assert banned.status == 403
        # Even the right password and other methods: the source is banned.
        assert attacker.send(attacker.request("OPTIONS", "sip:127.0.0.1", [])).status == 403
        # The user is not locked out: the right password from another address works.
        assert victim_elsewhere.register(600).status == 200
    finally:
        attacker.close()
        victim_elsewhere.close()
    lines = server.collect_output(0.5)
    ban = [line for line in lines if "event=auth_ban" in line]
    assert len(ban) == 1
    assert re.search(r"event=auth_ban source=127\.0\.0\.2 failures=20 until=\d{4}-\d\d-\d\dT", ban[0])
    status = ctl(server, "status", "--json")
    assert "127.0.0.2" in status.stdout
    # The operator sees the ban and lifts it; the source is challenged again, not refused.
    listed = ctl(server, "bans")
    assert listed.returncode == 0 and "127.0.0.2" in listed.stdout
    assert ctl(server, "unban", "127.0.0.2").stdout.strip() == "127.0.0.2 unbanned"
    assert ctl(server, "unban", "127.0.0.2").returncode == 1  # not banned any more
    assert "127.0.0.2" not in ctl(server, "bans").stdout
    again = Phone(port, "6141", "pw-6141", source="127.0.0.2")
    try:
        assert again.register(600).status == 200
    finally:
        again.close()


def test_trusted_network_is_authenticated_but_never_banned(server: Server) -> None:
    port = server.sip_port("udp")
    p = Phone(port, "6140", "pw-6140", source="127.0.0.9")
    try:
        assert p.send(p.request("REGISTER", "sip:6140@127.0.0.1", [("Contact", p.contact())])).status == 401
        for i in range(25):
            assert p.register(600, password=f"guess-{i}").status == 401
        assert p.register(600).status == 200
    finally:
        p.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_monitor_window_ban_expiry_and_per_user_counts() -> None:
    clock = Clock()
    monitor = SecurityMonitor(
        SecurityConfig(trusted_networks=["10.0.0.0/8"], ban_failures=3, ban_window_s=10, ban_duration_s=60), clock
    )
    monitor.record_failure("192.0.2.1", "6140")
    monitor.record_failure("192.0.2.1", "6140")
    clock.now += 11  # the first two fall out of the window
    monitor.record_failure("192.0.2.1", "6140")
    assert not monitor.is_banned("192.0.2.1")
    monitor.record_failure("192.0.2.1", "6141")
    monitor.record_failure("192.0.2.1", "6141")
    assert monitor.is_banned("192.0.2.1")
    assert not monitor.is_banned("192.0.2.2")
    assert monitor.user_failures() == {"6140": 3, "6141": 2}
    clock.now += 61
    assert not monitor.is_banned("192.0.2.1")
    for _ in range(10):
        monitor.record_failure("10.1.2.3", "6140")
    assert not monitor.is_banned("10.1.2.3")  # trusted: never banned
    assert monitor.status()["bans_total"] == 1


def test_monitor_reload_lifts_bans_on_newly_trusted_sources() -> None:
    clock = Clock()
    monitor = SecurityMonitor(SecurityConfig(trusted_networks=[], ban_failures=1), clock)
    monitor.record_failure("192.0.2.7", None)
    assert monitor.is_banned("192.0.2.7")
    monitor.reconfigure(SecurityConfig(trusted_networks=["192.0.2.0/24"], ban_failures=1))
    assert not monitor.is_banned("192.0.2.7")


def test_unknown_user_and_wrong_password_take_similar_time(server: Server) -> None:
    """The digest check runs against a dummy HA1 for unknown users: no timing oracle."""
    import statistics
    import time

    port = server.sip_port("udp")
    timings: dict[str, list[float]] = {"6140": [], "7999": []}
    # 127.0.0.9 is trusted in this fixture: never banned, however many failures.
    phones = {user: Phone(port, user, "wrong-password", source="127.0.0.9") for user in timings}
    try:
        for _ in range(15):  # interleaved, so machine noise hits both alike
            for user, phone in phones.items():
                started = time.perf_counter()
                assert phone.register(600).status == 401
                timings[user].append(time.perf_counter() - started)
    finally:
        for phone in phones.values():
            phone.close()
    known, unknown = (statistics.median(timings[u]) for u in ("6140", "7999"))
    assert abs(known - unknown) < max(0.002, 0.5 * min(known, unknown)), (known, unknown)


def test_a_worker_refuses_a_source_at_the_threshold_before_worker0_says_so() -> None:
    """Workers other than 0 report failures and also count them: no wait for the broadcast."""
    clock = Clock()
    monitor = SecurityMonitor(SecurityConfig(trusted_networks=["10.0.0.0/8"], ban_failures=3, ban_window_s=10), clock)
    reported: list[tuple[str, str | None]] = []
    monitor.failure_sink = lambda ip, user: reported.append((ip, user))
    for _ in range(2):
        monitor.record_failure("192.0.2.1", "6140")
    assert not monitor.is_banned("192.0.2.1")
    monitor.record_failure("192.0.2.1", "6140")
    assert monitor.is_banned("192.0.2.1")  # at the threshold, locally
    assert reported == [("192.0.2.1", "6140")] * 3  # every failure still reaches worker 0
    assert monitor.status()["bans_total"] == 0  # decided (and logged) by worker 0 only
    monitor.lift_ban("192.0.2.1")  # an operator's unban, relayed: counting starts afresh
    monitor.record_failure("192.0.2.1", "6140")
    assert not monitor.is_banned("192.0.2.1")
    for _ in range(5):
        monitor.record_failure("10.1.2.3", None)
    assert not monitor.is_banned("10.1.2.3")  # trusted
