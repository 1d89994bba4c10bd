"""Event logs: one line per registration added, refreshed (debug), removed and expired,
authentication failures; bounded under a flood; JSON lines; the documented name set."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Server, loopback_args

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "registrar"))
from reg_helpers import Phone, ctl

from vivait_sip import events
from vivait_sip.logs import KeyValueFormatter, split_kv
from vivait_sip.registrar.location import Binding, LocationService

ROOT = Path(__file__).resolve().parents[2]
LOGGER = "vivait_sip.registrar.location"


def _binding(aor: str, contact: str, expires_at: float, conn_id: int | None = None) -> Binding:
    return Binding(aor, contact, expires_at, transport="tcp" if conn_id else "udp", source_host="192.0.2.7", source_port=5099,
                   conn_id=conn_id, user_agent="Phone 'X' \x1b[31m", registered_at=0.0)


def _events(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The lines as the server writes them (its formatter: values quoted and escaped), from `event=` on."""
    formatter = KeyValueFormatter()
    lines = [formatter.format(r) for r in caplog.records if r.name == LOGGER]
    return [line[line.index("event="):] for line in lines]


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """The event throttle's clock, under the test's control (and a fresh window)."""
    now = [1000.0]
    monkeypatch.setattr(events.event_throttle, "clock", lambda: now[0])
    monkeypatch.setattr(events.event_throttle, "_window", {})
    yield now


def test_one_line_per_registration_event(caplog: pytest.LogCaptureFixture, fixed_clock: list[float]) -> None:
    clock = [100.0]
    location = LocationService(None, clock=lambda: clock[0])
    caplog.set_level(logging.INFO, LOGGER)
    location.put(_binding("sip:6140@pbx", "sip:6140@192.0.2.7:5099", 160.0))
    location.put(_binding("sip:6140@pbx", "sip:6140@192.0.2.7:5099", 200.0))  # a refresh: debug only
    location.put(_binding("sip:6141@pbx", "sip:6141@192.0.2.7:5099", 110.0))
    location.put(_binding("sip:6142@pbx", "sip:6142@192.0.2.7:5099", 160.0, conn_id=7))
    location.remove("sip:6140@pbx", "sip:6140@192.0.2.7:5099")
    clock[0] = 120.0
    location.purge_expired()
    location.remove_flow(7)
    lines = _events(caplog)
    assert [line.split(" ", 1)[0] for line in lines] == [
        "event=registration_added", "event=registration_added", "event=registration_added",
        "event=registration_removed", "event=registration_expired", "event=registration_removed",
    ]
    # Values from the network are quoted and escaped (the exact quoting is logs.py's business).
    assert all("\x1b" not in line for line in lines)
    first = split_kv(lines[0])
    assert {k: first[k] for k in ("aor", "contact", "transport", "source", "expires")} == {
        "aor": "sip:6140@pbx", "contact": "sip:6140@192.0.2.7:5099", "transport": "udp", "source": "192.0.2.7:5099", "expires": "60",
    }
    assert first["user_agent"].startswith("Phone 'X' ")
    assert split_kv(lines[3])["reason"] == "unregistered" and split_kv(lines[3])["aor"] == "sip:6140@pbx"
    assert split_kv(lines[4])["aor"] == "sip:6141@pbx"
    assert split_kv(lines[5])["reason"] == "flow_failed" and split_kv(lines[5])["transport"] == "tcp"
    caplog.clear()
    caplog.set_level(logging.DEBUG, LOGGER)
    location.put(_binding("sip:6143@pbx", "sip:6143@192.0.2.7:5099", 900.0))
    location.put(_binding("sip:6143@pbx", "sip:6143@192.0.2.7:5099", 900.0))
    assert [line.split(" ", 1)[0] for line in _events(caplog)] == ["event=registration_added", "event=registration_refreshed"]


def test_a_flood_of_distinct_aors_writes_a_bounded_number_of_lines(caplog: pytest.LogCaptureFixture, fixed_clock: list[float]) -> None:
    location = LocationService(None, clock=lambda: 100.0)
    caplog.set_level(logging.INFO, LOGGER)
    for n in range(5000):
        location.put(_binding(f"sip:{n}@pbx", f"sip:{n}@192.0.2.7:5099", 700.0))
    assert len(_events(caplog)) == events.EVENTS_PER_SECOND
    fixed_clock[0] += 1
    location.put(_binding("sip:last@pbx", "sip:last@192.0.2.7:5099", 700.0))
    assert _events(caplog)[-1].endswith(f"suppressed_since_last={5000 - events.EVENTS_PER_SECOND}")
    assert location.count() == 5001


def test_loading_the_store_logs_no_event(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    from vivait_sip.store import Store

    store = Store.open(tmp_path)
    first = LocationService(store)
    first.put(_binding("sip:6140@pbx", "sip:6140@192.0.2.7:5099", time.time() + 600), event=False)
    first.flush()
    caplog.set_level(logging.DEBUG, LOGGER)
    again = LocationService(store)
    assert again.load() == 1
    assert _events(caplog) == []
    store.close()


def test_the_documented_event_names_are_the_declared_ones() -> None:
    text = (ROOT / "docs" / "admin.md").read_text()
    table = text.split("## Event logs", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([a-z_]+)` \|", table, re.M)
    assert sorted(documented) == sorted(events.EVENTS)


# ---- the running server, JSON lines --------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = {
        "registrar": {"min_expires": 1, "default_expires": 60, "purge_interval_s": 0.3, "algorithms": ["MD5"],
                      "users": [{"number": "6140", "password": "pw-6140"}]},
        "security": {"trusted_networks": ["127.0.0.9/32"], "ban_failures": 1000},
    }
    srv = Server(tmp_path_factory.mktemp("events"), config, [*loopback_args(http=False, tls=False), "--log-format", "json"]).start()
    yield srv
    srv.kill()


def _json_events(server: Server, name: str, timeout: float = 5.0) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for line in server.collect_output(0.2):
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == name:
                    found.append(record)
        if found or time.monotonic() > deadline:
            return found


def test_server_logs_registration_and_auth_events_as_json(server: Server) -> None:
    phone = Phone(server.sip_port("udp"), "6140", "pw-6140", algorithm="MD5")
    try:
        assert phone.register(60, password="wrong").status == 401
        failure = _json_events(server, "auth_failure")
        assert failure and failure[-1]["user"] == "6140" and failure[-1]["source"] == "127.0.0.1"

        agent = ("User-Agent", 'Desk "phone" 1.0')
        assert phone.register(60, extra=[agent]).status == 200
        added = _json_events(server, "registration_added")
        assert added, server.output[-5:]
        line = added[-1]
        assert line["level"] == "info" and line["logger"] == LOGGER
        assert line["aor"] == "sip:6140@127.0.0.1"
        assert line["contact"] == f"sip:6140@127.0.0.1:{phone.local_port};transport=udp"
        assert (line["transport"], line["source"], line["user_agent"], line["expires"]) == ("udp", f"127.0.0.1:{phone.local_port}", 'Desk "phone" 1.0', "60")

        assert phone.register(0).status == 200
        removed = _json_events(server, "registration_removed")
        assert removed and removed[-1]["reason"] == "unregistered"

        assert phone.register(60).status == 200
        assert ctl(server, "unregister", "sip:6140@127.0.0.1").returncode == 0
        removed = _json_events(server, "registration_removed")
        assert removed and removed[-1]["reason"] == "operator"

        assert phone.register(1).status == 200
        expired = _json_events(server, "registration_expired", timeout=5)
        assert expired and expired[-1]["aor"] == "sip:6140@127.0.0.1" and expired[-1]["reason"] == "expired"
    finally:
        phone.close()
