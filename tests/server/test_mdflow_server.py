"""mdflow on a real server: ctl commands, the admin API, /metrics and the load generator.

Every test starts `vivait-sip serve` as a subprocess (tests/harness.py) with a small
statistics interval so the intervals close within the test.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from harness import Server, loopback_args

CLI = [sys.executable, "-m", "vivait_sip"]
BENCH = Path(__file__).resolve().parents[2] / "bench" / "mdflow_load.py"


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def ctl(srv: Server, *args: str) -> str:
    proc = run_cli(*srv.ctl_args, "mdflow", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def api(srv: Server, path: str, body: object | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{srv.admin}{path}", data=data)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {srv.admin_token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        payload = response.read().decode()
    return payload if path.endswith("/metrics") else json.loads(payload)


def flow(name: str, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "flujo": name,
        "en_paso": 0,
        "tasa_sal_seg": 5,
        "dnis_max": 2,
        "dnis_umbral_masivo": 3,
        "to_desborda_seg": 0.6,
    }
    values.update(overrides)
    return values


def mdflow_config(*flows: dict[str, Any], interval: int = 3) -> dict[str, Any]:
    return {"mdflow": {"tick_ms": 50, "estad_interv_seg": interval, "flows": list(flows)}}


def start(tmp_path: Path, config: dict[str, Any]) -> Server:
    return Server(tmp_path, config, loopback_args(tls=False, http=False)).start()


def stats_line(text: str, name: str) -> dict[str, str]:
    """The key=value pairs of one flow's `show stats` line."""
    for line in text.splitlines():
        if line.startswith(f"flow={name} "):
            return dict(pair.split("=", 1) for pair in line.split(" "))
    raise AssertionError(f"no stats line for {name}: {text!r}")


def json_flow(snapshot: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in snapshot["flows"] if f["flow"] == name)


def offer(srv: Server, name: str, dnis: str, count: int, hold_ms: int = 0) -> dict[str, int]:
    calls = [{"dnis": dnis, "hold_ms": hold_ms}] * count
    answer: dict[str, int] = api(srv, "/api/mdflow/calls", {"flow": name, "calls": calls})
    return answer


def test_show_stats_agrees_with_the_load_generator(tmp_path: Path) -> None:
    srv = start(tmp_path, mdflow_config(flow("Trunk")))
    try:
        proc = subprocess.run(
            [
                sys.executable,
                str(BENCH),
                "--admin",
                srv.admin,
                "--admin-token-file",
                str(srv.data_dir / "admin-token"),
                "--flow",
                "Trunk",
                "--scenario",
                "hot",
                "--rate",
                "5",
                "--overload",
                "4",
                "--seconds",
                "1.5",
                "--dnis-count",
                "6",
                "--hold-ms",
                "250",
                "--hold-share",
                "0.5",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        feed = json.loads(proc.stdout)
        text = ctl(srv, "show", "stats")
        snapshot = json.loads(ctl(srv, "show", "stats", "--json"))
    finally:
        assert srv.stop() == 0
    assert feed["agree"] is True and all(feed["checks"].values())
    gen = feed["generator"]
    # The feed makes every outcome happen: hot DNIS plus others beyond dnis_max=2
    # (agujero), patient calls overflowing (desborda) and impatient ones hanging up.
    assert gen["offered"] > 20 and gen["ok"] > 0 and gen["agujero"] > 0 and gen["queued"] > 0
    # The ctl reads fall in the same closed interval the generator read.
    assert snapshot["interval_start"] == feed["interval_start"] + feed["interval_s"]
    fields = stats_line(text, "Trunk")
    as_json = json_flow(snapshot, "Trunk")
    for key in ("offered", "ok", "agujero", "desborda", "abandoned", "queued"):
        assert int(fields[key]) == as_json[key] == feed["server"][key], key
    assert int(fields["offered"]) == gen["offered"]
    assert int(fields["agujero"]) == gen["agujero"]
    assert int(fields["desborda"]) > 0 and int(fields["abandoned"]) > 0
    released = int(fields["ok"]) - gen["ok"]
    assert released > 0
    assert released + int(fields["desborda"]) + int(fields["abandoned"]) == gen["queued"]
    assert fields["complete"] == "1" and fields["interval_s"] == "3"
    assert float(fields["in_rate"]) == round(gen["offered"] / 3, 2)
    assert float(fields["admitted_rate"]) == round(int(fields["ok"]) / 3, 2)


def test_load_generator_exits_non_zero_when_another_source_feeds_the_flow(
    tmp_path: Path,
) -> None:
    srv = start(tmp_path, mdflow_config(flow("Trunk", tasa_sal_seg=1000), interval=2))
    try:
        gen = subprocess.Popen(
            [
                sys.executable,
                str(BENCH),
                "--admin",
                srv.admin,
                "--admin-token-file",
                str(srv.data_dir / "admin-token"),
                "--flow",
                "Trunk",
                "--rate",
                "10",
                "--overload",
                "1",
                "--seconds",
                "0.5",
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Extra calls as soon as the generator feeds (same interval): the server then
        # counts more calls than the generator sent.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            snapshot = api(srv, "/api/mdflow/stats?format=json")
            if json_flow(snapshot, "Trunk")["totals"]["offered"] > 0:
                break
            time.sleep(0.02)
        assert offer(srv, "Trunk", "intruder", 7) == {"ok": 7, "agujero": 0, "queued": 0}
        out, err = gen.communicate(timeout=30)
    finally:
        assert srv.stop() == 0
    assert gen.returncode == 1, out + err
    report = json.loads(out)
    assert report["agree"] is False and report["checks"]["offered"] is False
    assert report["server"]["offered"] == report["generator"]["offered"] + 7


def test_show_config_prints_the_deck_keys(tmp_path: Path) -> None:
    config = mdflow_config(
        flow("Cen_Inicio_SIP", en_paso=1, tasa_sal_seg=2, to_desborda_seg=5),
        flow("Cen_TrunkInternos", tasa_sal_seg=2.5, dnis_max=1, dnis_umbral_masivo=8),
    )
    srv = start(tmp_path, config)
    try:
        text = ctl(srv, "show", "config")
        as_json = json.loads(ctl(srv, "show", "config", "--json"))
    finally:
        assert srv.stop() == 0
    assert text == (
        "tick_ms=50 estad_interv_seg=3\n"
        "flow=Cen_Inicio_SIP en_paso=1 tasa_sal_seg=2 dnis_max=2 dnis_umbral_masivo=3"
        " to_desborda_seg=5\n"
        "flow=Cen_TrunkInternos en_paso=0 tasa_sal_seg=2.5 dnis_max=1 dnis_umbral_masivo=8"
        " to_desborda_seg=0.6\n"
    )
    assert [f["flujo"] for f in as_json["flows"]] == ["Cen_Inicio_SIP", "Cen_TrunkInternos"]
    assert as_json["flows"][0]["en_paso"] is True


def test_reload_applies_new_limits_without_dropping_queued_calls(tmp_path: Path) -> None:
    slow = flow("Trunk", tasa_sal_seg=1, to_desborda_seg=60)
    srv = start(tmp_path, mdflow_config(slow, interval=60))
    try:
        first = offer(srv, "Trunk", "913346140", 12)
        assert first == {"ok": 1, "agujero": 0, "queued": 11}
        time.sleep(0.6)
        before = json_flow(api(srv, "/api/mdflow/stats?format=json"), "Trunk")
        # At 1 call/s at most one more call has left the queue so far.
        assert before["queued"] >= 10
        srv.config_path.write_text(
            json.dumps(
                mdflow_config(flow("Trunk", tasa_sal_seg=20, to_desborda_seg=60), interval=60)
            )
        )
        summary = ctl(srv, "reload")
        assert summary.splitlines() == [
            "mdflow reloaded: 1 flow now",
            "  flow Trunk: tasa_sal_seg 1 -> 20",
        ], summary
        assert "tasa_sal_seg=20 " in ctl(srv, "show", "config")
        # 20/s drains the remaining calls well within a second; 1/s would need 10 s.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            after = json_flow(api(srv, "/api/mdflow/stats?format=json"), "Trunk")
            if after["queued"] == 0:
                break
            time.sleep(0.1)
    finally:
        assert srv.stop() == 0
    assert after["queued"] == 0
    # Nothing was dropped or reset: every call is counted, all of them ok.
    assert after["totals"] == {
        "offered": 12,
        "ok": 12,
        "agujero": 0,
        "desborda": 0,
        "abandoned": 0,
    }


def test_reload_removing_a_flow_releases_its_queue_as_ok(tmp_path: Path) -> None:
    keep = flow("Keep", tasa_sal_seg=1, to_desborda_seg=60)
    gone = flow("Gone", tasa_sal_seg=1, to_desborda_seg=60)
    srv = start(tmp_path, mdflow_config(keep, gone, interval=60))
    try:
        assert offer(srv, "Gone", "555", 6) == {"ok": 1, "agujero": 0, "queued": 5}
        assert offer(srv, "Keep", "777", 4) == {"ok": 1, "agujero": 0, "queued": 3}
        srv.config_path.write_text(json.dumps(mdflow_config(keep, interval=60)))
        answer = json.loads(ctl(srv, "reload", "--json"))
        snapshot = api(srv, "/api/mdflow/stats?format=json")
        text = ctl(srv, "show", "stats")
        metrics = api(srv, "/metrics")
    finally:
        assert srv.stop() == 0
    # The removed flow's queued calls leave at once as ok (docs/mdflow.md, Live reload),
    # at most one of them having been released by the 1/s schedule before the reload.
    assert answer["flows"] == ["Keep"]
    assert 4 <= answer["released"] <= 5
    assert [f["flow"] for f in snapshot["flows"]] == ["Keep"]
    assert json_flow(snapshot, "Keep")["queued"] >= 2
    assert "flow=Gone " not in text and "flow=Keep " in text
    assert 'flow="Gone"' not in metrics


def test_debug_streams_every_interval_until_interrupted(tmp_path: Path) -> None:
    srv = start(tmp_path, mdflow_config(flow("Trunk"), interval=1))
    try:
        debug = subprocess.Popen(
            [*CLI, *srv.ctl_args, "mdflow", "debug"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(0.8)
            offer(srv, "Trunk", "913346140", 3)
            time.sleep(2.2)
        finally:
            debug.terminate()
            out, _ = debug.communicate(timeout=10)
        assert srv.proc is not None and srv.proc.poll() is None
        still = ctl(srv, "show", "stats")
    finally:
        assert srv.stop() == 0
    blocks = [b for b in out.split("\n\n") if b.strip()]
    assert len(blocks) >= 2, out
    for block in blocks:
        assert re.fullmatch(r"flow=Trunk mode=control interval_s=1 complete=1 .*", block.strip())
    offered = [int(stats_line(b, "Trunk")["offered"]) for b in blocks]
    assert 3 in offered  # the interval holding the three calls was streamed
    assert still.startswith("flow=Trunk ")


def test_metrics_expose_mdflow_with_the_flow_label(tmp_path: Path) -> None:
    srv = start(tmp_path, mdflow_config(flow("Trunk"), flow("Paso", en_paso=1)))
    try:
        offer(srv, "Trunk", "913346140", 8)
        offer(srv, "Paso", "1", 2)
        metrics = api(srv, "/metrics")
        scrape = api(srv, "/api/mdflow/metrics")
    finally:
        assert srv.stop() == 0
    assert "vivait_uptime_seconds " in metrics  # core counters on the same page
    assert "# TYPE vivait_mdflow_calls_total counter" in metrics
    assert 'vivait_mdflow_pass_through{flow="Paso"} 1' in metrics
    assert 'vivait_mdflow_pass_through{flow="Trunk"} 0' in metrics
    assert 'vivait_mdflow_offered_total{flow="Trunk"} 8' in metrics
    assert 'vivait_mdflow_offered_total{flow="Paso"} 2' in metrics
    assert re.search(r'vivait_mdflow_queued_calls\{flow="Trunk"\} [0-9]', metrics)
    assert 'vivait_mdflow_calls_total{flow="Paso",outcome="ok"} 2' in metrics
    assert scrape.startswith("# HELP vivait_mdflow_")
