"""Headless Chromium (Debian's, through Playwright) runs the webfon against a real server,
inside `unshare -n` (loopback only): login by role and accessible name, registration of
the pool extension over WSS, a call between two browsers with audio both ways, mute,
hold, resume, DTMF, hang up, a rejected call, the digit cap, Spanish, logout; calls
between browsers anchored in the relay (built-in or rtpengine), with media after attended
and blind transfers.  The screenshots of each state land in tests/out/webrtc/ (not
committed): look at them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "out" / "webrtc"


def run_scenarios(*scenarios: str, timeout: float = 240) -> dict[str, object]:
    assert Path("/usr/bin/chromium").exists(), "Debian's chromium is needed (scripts/test.sh installs it)"
    assert (ROOT / "web" / "vendor" / "sip.js" / "lib" / "index.js").exists(), "sip.js is not installed: run ./scripts/install.sh"
    args = [a for s in scenarios for a in ("--scenario", s)]
    inner = f"ip link set lo up && exec {sys.executable} {ROOT / 'tests' / 'webrtc' / 'browser_scenarios.py'} {OUT} {' '.join(args)}"
    proc = subprocess.run(["timeout", str(int(timeout)), "unshare", "-n", "sh", "-c", inner], capture_output=True,
                          text=True, timeout=timeout + 30, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no result (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    result: dict[str, object] = json.loads(lines[-1][len("RESULT "):])
    failed = [c for c in result["checks"] if not c["ok"]]  # type: ignore[union-attr]
    assert not failed and proc.returncode == 0, f"{failed}\n{proc.stdout[-4000:]}"
    return result


def test_the_webfon_in_a_real_browser() -> None:
    result = run_scenarios("ui")
    shots = {Path(p).name for p in result["screenshots"]}  # type: ignore[union-attr]
    assert {"01-login.png", "03-ready.png", "05-incoming.png", "06-connected-muted.png", "07-on-hold.png",
            "08-call-ended.png", "10-ready-es.png"} <= shots


def test_browser_and_baresip_through_rtpengine() -> None:
    """media.backend rtpengine: the browser calls a baresip phone (WebRTC on one side, plain
    RTP on the other), audio both ways (the browser's inbound packets rise, baresip's
    recording holds the browser's 1000 Hz tone); then baresip calls the user and the
    browser answers."""
    result = run_scenarios("media")
    names = [c["check"] for c in result["checks"]]  # type: ignore[union-attr]
    assert any("1000 Hz" in n for n in names) and any("baresip -> browser" in n for n in names)


def test_call_waiting_and_attended_transfer_between_browsers() -> None:
    """Three browsers: a second call to a user in a call is shown as waiting, answering it
    holds the first (listed with its own Resume); hanging up returns to the held call;
    the attended transfer (consult, complete: REFER with Replaces) leaves the transferor
    with "Call ended" and the two others connected, and both of them receive audio
    after the join (the calls are anchored in the built-in relay: the transferee keeps
    its DTLS association, the target gets a new one with another certificate)."""
    result = run_scenarios("waiting")
    shots = {Path(p).name for p in result["screenshots"]}  # type: ignore[union-attr]
    assert {"12-call-waiting.png", "13-two-calls.png", "14-consulting.png", "15-transferred.png"} <= shots
    names = [c["check"] for c in result["checks"]]  # type: ignore[union-attr]
    assert sum("after the join" in n for n in names) == 2


def test_browser_to_browser_anchored_and_blind_transfer() -> None:
    """Two browsers call each other: the call is anchored in the built-in relay (reason
    webrtc in `ctl calls` and the CDR, whose media statistics count both browsers'
    packets), audio both ways; then the callee transfers the caller blind (REFER from
    the page) to a third browser, and the kept caller and the target hear each other."""
    result = run_scenarios("b2b")
    names = [c["check"] for c in result["checks"]]  # type: ignore[union-attr]
    assert any("reason webrtc" in n for n in names) and sum("blind transfer between browsers" in n for n in names) == 2


def test_browser_and_baresip_through_the_builtin_bridge() -> None:
    """media.backend builtin (the media workers' WebRTC bridge): the browser calls a baresip
    phone that auto-answers, audio both ways (inbound packets rising; baresip's recording
    holds the browser's 1000 Hz tone); baresip calls the user number: the browser rings
    (the hard extension does not), answers, holds, resumes, transfers to a second
    baresip; a browser whose tab closes, and one whose Chromium is killed (SIGKILL),
    end their calls on the SIP side within 10 s with the cause in the CDR."""
    result = run_scenarios("builtin", timeout=280)
    names = [c["check"] for c in result["checks"]]  # type: ignore[union-attr]
    assert any("1000 Hz" in n for n in names) and any("killed" in n for n in names)
    shots = {Path(p).name for p in result["screenshots"]}  # type: ignore[union-attr]
    assert {"16-connected-via-builtin.png", "17-incoming-builtin.png", "18-on-hold-builtin.png"} <= shots


def test_transfers_between_browsers_anchored_in_rtpengine() -> None:
    """media.backend rtpengine: the attended transfer between three browsers (consult,
    complete) and the blind transfer from the page, both joined browsers receiving audio
    afterwards; `ctl calls` says anchored (webrtc) and linked, `ctl media` one session
    after the join and none at the end, the CDRs say transferred and linked.  The
    attended transfer's target, which had a DTLS association with the same daemon's
    certificate in its consultation call, is given that certificate under another
    fingerprint hash (without it Chrome refuses the new leg: "Failed to set SSL role")."""
    result = run_scenarios("rtpe-waiting")  # each its own server: the web pool has two extensions
    names = [c["check"] for c in result["checks"]]  # type: ignore[union-attr]
    assert sum("after the join" in n and "(rtpengine)" in n for n in names) == 2
    result = run_scenarios("rtpe-b2b")
    names = [c["check"] for c in result["checks"]]  # type: ignore[union-attr]
    assert sum("blind transfer between browsers (rtpengine)" in n for n in names) == 2
