"""mdflow in front of the B2BUA, flooded by SIPp playing the PRI gateway, with one and
two workers.

The dialplan sends every call from the gateway through flow `Cen_Flood` (control mode,
`tasa_sal_seg` 5, 10 DNIS queues, 3 s before desborda, 180 while queued) and then to user
6141, whose phone is a SIPp UAS ringing 1 s before it answers.  The gateway offers 10x
the rate (50 calls/s for 8 s) over 20 DNIS (SIPp -inf): 45/s from patient callers, 5/s
from callers that cancel after 1.5 s without an answer.

* Every INVITE ends: answered (200), agujero or desborda (503, the reason phrase says
  which), or cancelled (487); none is stuck: `ctl calls` is empty at the end.
* Each call's CDR agrees with what SIPp saw, and `ctl mdflow show stats` counts (totals
  since start) equal the CDRs' flow outcomes and SIPp's counts.
* The admitted rate, measured where it matters (INVITEs reaching the phone), is the
  limit.  (1) 50 +- 1 calls in the 10 s from the first admission (2 %): the engine
  admits the first 5 at once, then releases one call per 1/5 s slot on 100 ms ticks and
  never more than ceil(5) in any 1 s window (docs/mdflow.md); a 10 s window holds 50,
  give or take the one its edge cuts.  (2) Once the queues formed, the releases come at
  5/s within 1 %, as the slope of the arrivals over time: what happens between the engine
  and the phone (routing, a message between workers, UDP on loopback) moves a call by
  milliseconds, but on a loaded box (the parallel suite on 2 vCPUs) the last one was seen
  0.2 s late, which first-to-last alone turns into a 3 % error, and a server stalled half a
  second near the end, which bent a least-squares line by 1.5 %.  So the slope is
  Theil-Sen's (the median of the slopes between every two arrivals), which one late
  stretch does not move while the pacing as a whole still must be right.  (3) No 1 s window holds more
  than 5, +1, of the INVITEs the B2BUA sent to the phone (the out legs' start in the CDRs):
  the first 5 went straight through and the next ones through the queue, paths a few
  milliseconds apart, so 6 may fall within a second at that seam.  Counted where they leave,
  not where the phone sees them: loopback delivery on the loaded box once held INVITEs back
  and the phone saw 7 in one second.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from harness import Server
from peer_env import (
    GATEWAY,
    Sipp,
    active_calls,
    base_config,
    cdrs,
    ctl,
    header,
    register,
    sipp,
    start_server,
    wait_for,
    workers,
)

__all__ = ["workers"]

pytestmark = pytest.mark.timeout(120)

FLOW = "Cen_Flood"
RATE = 5  # tasa_sal_seg
DNIS = [f"91334620{i:02d}" for i in range(20)]
FLOOD_S = 8
PATIENT_RATE = 9 * RATE  # + the impatient: 10x the limit
IMPATIENT_RATE = RATE
WINDOW_S = 10


def flood_config(workers: int) -> dict[str, Any]:
    config = base_config(
        workers,
        trunks=[{"name": "gw", "host": GATEWAY, "port": 5999, "networks": [f"{GATEWAY}/32"], "options_interval_s": 0}],
        dialplan=[{"name": "flood", "match": {"source": {"trunks": ["gw"]}},
                   "action": {"type": "flow", "flow": FLOW, "ringing": True, "then": {"type": "user", "user": "6141"}}}],
    )
    # Load shedding is not under test here: on the loaded CI box the loop once lagged past
    # the default 250 ms and a few INVITEs got "503 ... (overloaded)" instead of mdflow's answer.
    config["sip"]["limits"]["overload_lag_ms"] = 60000
    config["mdflow"] = {"tick_ms": 100, "estad_interv_seg": 10, "flows": [
        {"flujo": FLOW, "en_paso": False, "tasa_sal_seg": RATE, "dnis_max": 10, "dnis_umbral_masivo": 5,
         "to_desborda_seg": 3},
    ]}
    return config


def outcome_of(final: str) -> str:
    """What SIPp saw: the final response to its INVITE."""
    status = final.split(" ", 2)[1]
    if status == "200":
        return "answered"
    if status == "487":
        return "cancelled"
    first_line = final.splitlines()[0]
    match = re.search(r"mdflow (agujero|desborda)", first_line)
    assert status == "503" and match, first_line
    return match.group(1)


def finals(caller: Sipp) -> dict[str, str]:
    """Call-ID → SIPp's outcome of each call it placed."""
    out = {}
    for message in caller.received("SIP/2.0 "):
        status = int(message.split(" ", 2)[1])
        if status >= 200 and (header(message, "CSeq") or "").endswith(" INVITE"):
            out[header(message, "Call-ID") or ""] = outcome_of(message)
    return out


def mdflow_totals(server: Server) -> dict[str, int]:
    out = ctl(server, "mdflow", "show", "stats", "--json")
    assert out.returncode == 0, out.stderr
    [flow] = [f for f in json.loads(out.stdout)["flows"] if f["flow"] == FLOW]
    return dict(flow["totals"])


def test_a_flood_through_one_flow(tmp_path: Path, workers: int) -> None:
    server = start_server(tmp_path / "srv", flood_config(workers))
    phone = sipp("phone", tmp_path, "b2b_uas_ring.xml", "-timeout", "60s").start()
    register(server, "6141", "pw-6141", phone.port, aor="5141")
    (tmp_path / "dnis.csv").write_text("SEQUENTIAL\n" + "".join(f"{d};\n" for d in DNIS))
    target = f"127.0.0.1:{server.sip_port('udp')}"

    def gateway(name: str, scenario: str, rate: int) -> Sipp:
        return sipp(name, tmp_path, scenario, target, "-inf", str(tmp_path / "dnis.csv"), "-r", str(rate),
                    "-m", str(rate * FLOOD_S), "-l", "1000", "-timeout", "60s", local=GATEWAY)

    patient = gateway("patient", "b2b_flood_uac.xml", PATIENT_RATE)
    impatient = gateway("impatient", "b2b_flood_uac_impatient.xml", IMPATIENT_RATE)
    try:
        patient.start(settle=0)
        impatient.start(settle=0)
        assert patient.wait(40) == 0, patient.report()
        assert impatient.wait(40) == 0, impatient.report()
        wait_for(lambda: not active_calls(server), 10, 0.3, "calls still up")
        phone.stop()

        # Every INVITE ended, and how, as SIPp saw it.
        seen = {**finals(patient), **finals(impatient)}
        assert len(seen) == (PATIENT_RATE + IMPATIENT_RATE) * FLOOD_S
        by_sipp = Counter(seen.values())
        assert set(by_sipp) <= {"answered", "agujero", "desborda", "cancelled"}
        assert by_sipp["answered"] and by_sipp["agujero"] and by_sipp["desborda"] and by_sipp["cancelled"], by_sipp
        assert set(finals(patient).values()) <= {"answered", "agujero", "desborda"}

        # Each CDR agrees with SIPp; the stats with the CDRs (and so with SIPp).
        records = {r["legs"][0]["call_id"]: r for r in cdrs(server)}
        assert set(records) == set(seen)
        expected = {"answered": ("answered", {"ok"}), "agujero": ("congestion", {"agujero"}),
                    "desborda": ("congestion", {"desborda"}), "cancelled": ("cancelled", {"abandoned", "ok"})}
        for call_id, outcome in seen.items():
            record = records[call_id]
            disposition, flow_outcomes = expected[outcome]
            assert record["flow"] == FLOW and record["rule"] == "flood", record
            assert record["disposition"] == disposition and record["flow_outcome"] in flow_outcomes, (outcome, record)
            assert record["callee"] in DNIS and record["trunk"] == "gw"
        by_flow = Counter(r["flow_outcome"] for r in records.values())
        totals = mdflow_totals(server)
        assert totals == {"offered": len(seen), "ok": by_flow["ok"], "agujero": by_flow["agujero"],
                          "desborda": by_flow["desborda"], "abandoned": by_flow["abandoned"]}, (totals, by_flow)
        assert totals["agujero"] == by_sipp["agujero"] and totals["desborda"] == by_sipp["desborda"]
        rang_then_cancelled = sum(1 for c, o in seen.items() if o == "cancelled" and records[c]["flow_outcome"] == "ok")
        assert totals["ok"] == by_sipp["answered"] + rang_then_cancelled
        assert totals["abandoned"] == by_sipp["cancelled"] - rang_then_cancelled

        # The admitted rate: the INVITEs that reached the phone.
        arrivals = sorted(when for when, _ in phone.received_at("INVITE"))
        assert len(arrivals) == totals["ok"]
        first = arrivals[0]
        in_window = sum(1 for t in arrivals if t < first + WINDOW_S)
        assert abs(in_window - RATE * WINDOW_S) <= 1, (in_window, " ".join(f"{t - first:.2f}" for t in arrivals))
        # At the B2BUA: when each admitted call's INVITE left for the phone (its out leg).
        sent = sorted(leg["started_at"] for r in records.values() for leg in r["legs"] if leg["direction"] == "out")
        assert len(sent) == totals["ok"]
        busiest = max(sum(1 for u in sent if t <= u < t + 1) for t in sent)
        assert busiest <= RATE + 1, (busiest, " ".join(f"{t - sent[0]:.2f}" for t in sent))
        # Once the queues formed, the releases (one per 1/5 s slot): within 1 % of the limit,
        # as the robust slope of arrivals over time (see the module docstring).
        paced = [t for t in arrivals if t >= first + 0.5]
        paced_rate = statistics.median((j - i) / (paced[j] - paced[i]) for i in range(len(paced))
                                       for j in range(i + 1, len(paced)) if paced[j] > paced[i])
        assert abs(paced_rate - RATE) <= 0.01 * RATE, (paced_rate, " ".join(f"{t - first:.2f}" for t in paced))
        print(f"\nmdflow {workers} worker(s): offered {totals['offered']}, ok {totals['ok']}, agujero "
              f"{totals['agujero']}, desborda {totals['desborda']}, abandoned {totals['abandoned']}; "
              f"SIPp answered {by_sipp['answered']}, cancelled {by_sipp['cancelled']} ({rang_then_cancelled} while "
              f"ringing); {in_window} admitted in the first {WINDOW_S} s = {in_window / WINDOW_S:.2f}/s "
              f"(limit {RATE}/s), paced {paced_rate:.3f}/s over {paced[-1] - paced[0]:.1f} s, busiest 1 s window {busiest}")
    finally:
        for runner in (patient, impatient, phone):
            runner.stop()
        server.stop()
