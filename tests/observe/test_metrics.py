"""/metrics passes `promtool check metrics` and has every family `ctl status` knows (the
registrar's included, per worker where it differs); `ctl status` prints tables."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Server, loopback_args
from obs_helpers import admin_get

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "registrar"))
from reg_helpers import Phone, ctl

from vivait_sip.metrics import escape_label, family
from vivait_sip.statusview import render_status
from vivait_sip.workers import owner_index

pytestmark = pytest.mark.timeout(90)

USERS = [{"number": str(n), "password": f"pw-{n}"} for n in range(7000, 7008)]


def promtool(text: str) -> subprocess.CompletedProcess[str]:
    assert shutil.which("promtool"), "promtool is required (Debian package prometheus)"
    return subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False)


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_label_values_are_escaped_and_promtool_agrees() -> None:
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    text = "\n".join(family("vivait_test_total", "counter", "A test.", [({"user": 'x"\\\ny'}, 3)])) + "\n"
    assert promtool(text).returncode == 0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = {"registrar": {"users": USERS, "algorithms": ["MD5"]}, "security": {"trusted_networks": ["127.0.0.9/32"]}}
    srv = Server(tmp_path_factory.mktemp("metrics"), config, [*loopback_args(http=False, tls=False), "--workers", "2"]).start()
    # One AOR of each worker registered, and failures for an existing and an invented user.
    for number in ("7000", "7001", "7004", "7007"):
        phone = Phone(srv.sip_port("udp"), number, f"pw-{number}", algorithm="MD5")
        assert phone.register(600).status == 200
        phone.close()
    assert {owner_index(n, 2) for n in ("7000", "7001", "7004", "7007")} == {0, 1}
    liar = Phone(srv.sip_port("udp"), "7005", "pw-7005", algorithm="MD5")
    assert liar.register(600, password="wrong").status == 401
    assert liar.register(600, password="wrong").status == 401
    liar.close()
    ghost = Phone(srv.sip_port("udp"), "7099", "nope", algorithm="MD5", auth_user="admin")
    assert ghost.register(600, aor_user="7006").status == 401
    ghost.close()
    yield srv
    srv.kill()


def test_metrics_pass_promtool_and_carry_the_registrar(server: Server) -> None:
    text, headers = admin_get(server, "/metrics")
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    check = promtool(text)
    assert check.returncode == 0 and check.stdout.strip() == "" and check.stderr.strip() == "", check.stdout + check.stderr
    values = samples(text)
    assert values["vivait_registrar_bindings"] == 4  # both workers' bindings
    assert values["vivait_registrar_registered_aors"] == 4
    assert values["vivait_registrar_users"] == len(USERS)
    assert values["vivait_registrar_auth_failures_total"] == 3
    assert values['vivait_registrar_user_auth_failures_total{user="7005"}'] == 2
    assert values["vivait_registrar_unknown_user_auth_failures_total"] == 1  # "admin": no series of its own
    assert not any('user="admin"' in name for name in values)
    assert values["vivait_registrar_bans_total"] == 0 and values["vivait_registrar_banned_sources"] == 0
    assert values['vivait_registrar_info{realm="vivait"}'] == 1
    for worker in ("0", "1"):
        assert f'vivait_worker_requests_total{{worker="{worker}"}}' in values
        assert f'vivait_overload_shedding{{worker="{worker}"}}' in values
        assert f'vivait_event_loop_lag_seconds{{worker="{worker}"}}' in values
    assert sum(v for k, v in values.items() if k.startswith("vivait_worker_requests_total")) == values['vivait_sip_events_total{event="requests_in"}']
    assert any(k.startswith("vivait_native_info{state=") for k in values)
    assert any(k.startswith('vivait_listener_info{kind="sip",transport="udp"') for k in values)
    assert values["vivait_trace_sessions"] == 0


def test_everything_in_ctl_status_is_in_metrics(server: Server) -> None:
    status = json.loads(ctl(server, "status", "--json").stdout)
    text, _ = admin_get(server, "/metrics")
    names = set(re.findall(r"^# TYPE (\S+)", text, re.M))
    expected = {
        "uptime_s": "vivait_uptime_seconds", "transactions": "vivait_sip_transactions",
        "transactions_completed_waiting": "vivait_sip_transactions_completed_waiting", "connections": "vivait_connections",
        "version": "vivait_build_info", "native": "vivait_native_info", "listeners": "vivait_listener_info",
        "workers": "vivait_worker_info", "worker_link_drops": "vivait_worker_link_drops_total",
        "overload": "vivait_overload_shedding", "counters": "vivait_sip_events_total", "transport": "vivait_transport_messages_total",
        "registrar": "vivait_registrar_bindings", "trace": "vivait_trace_sessions", "pid": "vivait_worker_info",
        "dialogs": "vivait_sip_dialogs", "b2bua": "vivait_calls", "gc": "vivait_gc_collections_total",
        "media": "vivait_media_sessions", "webrtc": "vivait_webfon_sessions",
    }
    assert set(status) <= set(expected), set(status) - set(expected)
    assert {expected[key] for key in status} <= names
    values = samples(text)
    known = {
        "received": 'vivait_transport_messages_total{direction="in"}', "sent": 'vivait_transport_messages_total{direction="out"}',
        "connections_refused": "vivait_transport_connections_refused_total", "send_errors": "vivait_transport_send_errors_total",
    }
    for key in status["transport"]:  # every transport counter, under its own series
        assert known.get(key, f'vivait_transport_events_total{{event="{key}"}}') in values, key
    for key in status["registrar"]:
        family_name = {"realm": "vivait_registrar_info", "banned_sources": "vivait_registrar_banned_sources",
                       "user_failures": "vivait_registrar_user_auth_failures_total", "bans_total": "vivait_registrar_bans_total",
                       "unknown_user_failures": "vivait_registrar_unknown_user_auth_failures_total"}.get(key, f"vivait_registrar_{key}")
        assert family_name in names or f"{family_name}_total" in names, key


def test_ctl_status_prints_tables(server: Server) -> None:
    out = ctl(server, "status")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "[{" not in text and "{'" not in text  # no raw Python data
    header = re.search(r"^workers:\n  (worker +pid +requests_in +forwarded +transactions .*)$", text, re.M)
    assert header, text
    rows = re.findall(r"^  ([01]) +(\d+) +\d+ ", text, re.M)
    assert [r[0] for r in rows] == ["0", "1"]
    assert re.search(r"^  user_failures:\n    7005 +2$", text, re.M), text
    assert re.search(r"^  bindings +4$", text, re.M)


def test_render_status_escapes_and_bounds() -> None:
    status = {
        "version": "0.1.0", "native": "pure", "uptime_s": 90061.0, "listeners": ["sip udp 127.0.0.1:5060"],
        "connections": 0, "transactions": 1, "transactions_completed_waiting": 2,
        "registrar": {"realm": "vivait", "banned_sources": {"192.0.2.7": 12.5}, "user_failures": {f"u{n}": n for n in range(30)},
                      "nested": {"a": {"x": 1}, "b": {"x": 2, "y": "\x1b[2J"}}},
        "counters": {"requests_in": 5}, "transport": {"received": 6},
    }
    text = render_status(status)
    assert "uptime: 1d 01:01:01" in text
    assert "\x1b" not in text and "\\x1b[2J" in text
    assert "... and 10 more" in text
    assert re.search(r"^    name +x +y$", text, re.M) and re.search(r"^    b +2 +\\x1b\[2J$", text, re.M)
    assert re.search(r"^  transport_received +6$", text, re.M) and re.search(r"^  requests_in +5$", text, re.M)


def test_grafana_dashboard_queries_parse_and_use_served_families(server: Server, tmp_path: Path) -> None:
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "examples" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 20
    concrete = [e.replace("$__rate_interval", "5m").replace("$__range", "1h").replace("$job", ".*").replace("$instance", ".*") for e in exprs]
    rules = tmp_path / "rules.yml"
    rules.write_text("groups:\n  - name: dashboard\n    rules:\n" + "".join(f"      - record: dashboard:q{i}\n        expr: {json.dumps(e)}\n" for i, e in enumerate(concrete)))
    check = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    served = set(re.findall(r"^# TYPE (\S+)", admin_get(server, "/metrics")[0], re.M))
    used = {name for e in exprs for name in re.findall(r"\b(vivait_[a-z_]+)\{", e)}
    mdflow = {n for n in used if n.startswith("vivait_mdflow_")}  # served when flows are configured
    assert used - mdflow <= served, (used - mdflow) - served
    assert mdflow <= {"vivait_mdflow_calls_total", "vivait_mdflow_queued_calls", "vivait_mdflow_oldest_wait_seconds"}
