"""Headless Chromium driving the webfon against a real vivait-sip, run by test_browser.py
inside `unshare -n` (a network namespace with only loopback: nothing leaves the machine).

Starts the server (and, for the media scenario, rtpengine and a baresip phone) inside the
namespace, drives pages with Playwright by role and accessible name, saves screenshots of
the main states, and prints one JSON line of results.  Exit 0 when every check passed.

usage: browser_scenarios.py OUTDIR [--scenario NAME ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE), str(HERE.parent / "b2bua"), str(HERE.parent / "media")]

from audio import write_tone  # noqa: E402
from harness import Server, loopback_args  # noqa: E402
from peer_phones import Baresip, read_samples, tone_share  # noqa: E402
from playwright.async_api import Page, async_playwright, expect  # noqa: E402
from rtpengine_proc import Rtpengine  # noqa: E402
from webfon_helpers import base_config  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
    "--ignore-certificate-errors",
]
BUTTONS = [{"id": "BI_01", "label": "Retrollamada", "dial": "*43#"},
           {"id": "BI_02", "label": "Cancelar retrollamada", "dial": "*44#", "users": ["6140"]}]
TIMEOUT_MS = 15000


class Run:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.checks: list[dict[str, Any]] = []
        self.notes: list[dict[str, Any]] = []
        self.shots: list[str] = []
        # the pages' errors and console of the scenario running, shown if it stops short
        self.page_errors: list[str] = []
        self.page_console: list[str] = []

    def note(self, name: str, *detail: object) -> None:
        self.notes.append({"note": name, "detail": detail})
        print(f"NOTE {name}: {detail}", flush=True)

    def check(self, name: str, ok: bool, detail: object = None) -> None:
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        print(("PASS " if ok else "FAIL ") + name + ("" if detail is None else f": {detail}"), flush=True)

    async def shot(self, page: Page, name: str) -> None:
        path = self.out / f"{name}.png"
        await page.screenshot(path=str(path))
        self.shots.append(str(path))


async def login(page: Page, base: str, user: str, password: str, lang: str = "en") -> None:
    await page.goto(f"{base}/?lang={lang}", timeout=TIMEOUT_MS)
    await page.get_by_label("User" if lang == "en" else "Usuario").fill(user)
    await page.get_by_label("Password" if lang == "en" else "Contraseña").fill(password)
    await page.get_by_role("button", name="Log in" if lang == "en" else "Entrar", exact=True).click()


async def status_is(page: Page, text: str, timeout: int = TIMEOUT_MS) -> None:
    await expect(page.get_by_role("status")).to_have_text(text, timeout=timeout)


async def inbound_packets(page: Page) -> int:
    stats = await page.evaluate("window.webfon.stats()")
    total = 0
    for call in stats:
        inbound = (call.get("stats") or {}).get("inbound") or {}
        total += int(inbound.get("packetsReceived") or 0)
    return total


PC_STATE_JS = """async () => Promise.all(window.webfon.state.phone.calls.map(async (c) => {
  const h = c.session.sessionDescriptionHandler; const pc = h && h.peerConnection;
  if (!pc) return {remote: c.remote, pc: null};
  const out = {remote: c.remote, state: c.state, connection: pc.connectionState, ice: pc.iceConnectionState, inbound: [], dtls: [], pair: null};
  (await pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp") out.inbound.push([s.ssrc, s.packetsReceived]);
    if (s.type === "transport") out.dtls.push([s.dtlsState, s.selectedCandidatePairId || null]);
  });
  return out;
}))"""


async def pc_state(page: Page) -> Any:
    """Each call's peer connection: states, inbound streams (ssrc, packets), DTLS."""
    return await page.evaluate(PC_STATE_JS)


def ctl_json(server: Server, *args: str) -> Any:
    out = subprocess.run([sys.executable, "-m", "vivait_sip", *server.ctl_args, *args, "--json"],
                         capture_output=True, text=True, timeout=20)
    return json.loads(out.stdout)


async def scenario_ui(run: Run, server: Server, browser: Any) -> None:
    """Log in, register, call between two browsers (anchored in the built-in relay), hold, resume,
    DTMF, mute, hang up; Spanish; a wrong password; screenshots of each state."""
    port = server.ports[("http", "https")]
    base = f"https://127.0.0.1:{port}"
    ctx_a = await browser.new_context(ignore_https_errors=True, viewport={"width": 460, "height": 860})
    ctx_b = await browser.new_context(ignore_https_errors=True, viewport={"width": 460, "height": 860})
    a, b = await ctx_a.new_page(), await ctx_b.new_page()
    errors: list[str] = []
    for page in (a, b):
        page.on("pageerror", lambda exc: errors.append(str(exc)))
    await a.goto(f"{base}/?lang=en")
    await expect(a.get_by_role("button", name="Log in", exact=True)).to_be_visible()
    await run.shot(a, "01-login")
    await a.get_by_label("User").fill("6140")
    await a.get_by_label("Password").fill("wrong")
    await a.get_by_role("button", name="Log in", exact=True).click()
    await expect(a.get_by_role("alert")).to_have_text("Wrong user or password", timeout=TIMEOUT_MS)
    await run.shot(a, "02-login-failed")
    await a.get_by_label("Password").fill("pw-6140")
    await a.get_by_role("button", name="Log in", exact=True).click()
    await status_is(a, "Ready")
    regs = ctl_json(server, "registrations")["registrations"]
    mine = [r for r in regs if str(r["aor"]).startswith("sip:7000@")]
    run.check("browser registered its pool extension 7000 over wss", len(mine) == 1 and mine[0]["transport"] == "wss",
              [(r["aor"], r["transport"], r["user_agent"]) for r in regs])
    await expect(a.get_by_role("button", name="Retrollamada", exact=True)).to_be_visible()
    await expect(a.get_by_role("button", name="Cancelar retrollamada")).to_be_visible()
    await run.shot(a, "03-ready")
    await login(b, base, "6143", "pw-6143")
    await status_is(b, "Ready")
    # A calls B's user number
    await a.get_by_role("textbox", name="Number").fill("6143")
    await a.get_by_role("button", name="Call", exact=True).click()
    await status_is(a, "Calling")
    await status_is(b, "Ringing")
    await run.shot(a, "04-calling")
    await run.shot(b, "05-incoming")
    await b.get_by_role("button", name="Answer", exact=True).click()
    await status_is(a, "Connected")
    await status_is(b, "Connected")
    first = await inbound_packets(a)
    await asyncio.sleep(2.0)
    second = await inbound_packets(a)
    run.check("browser A receives B's audio (inbound packets rising)", second > first > 0 or second > 50, (first, second))
    run.check("browser B receives A's audio", await inbound_packets(b) > 0)
    for digit in "12#":
        await a.get_by_role("button", name=digit, exact=True).click()
    await a.get_by_role("button", name="Mute", exact=True).click()
    await expect(a.get_by_role("button", name="Mute", exact=True)).to_have_attribute("aria-pressed", "true")
    await run.shot(a, "06-connected-muted")
    await a.get_by_role("button", name="Mute", exact=True).click()
    await a.get_by_role("button", name="Hold", exact=True).click()
    await status_is(a, "On hold")
    await expect(a.get_by_role("button", name="Resume", exact=True)).to_be_visible()
    await run.shot(a, "07-on-hold")
    await a.get_by_role("button", name="Resume", exact=True).click()
    await status_is(a, "Connected")
    await a.get_by_role("button", name="Hang up", exact=True).click()
    await status_is(a, "Call ended")
    await status_is(b, "Call ended")
    await run.shot(b, "08-call-ended")
    # B rejects a call: A sees why
    await a.get_by_role("textbox", name="Number").fill("6143")
    await a.get_by_role("button", name="Call", exact=True).click()
    await status_is(b, "Ringing")
    await b.get_by_role("button", name="Reject", exact=True).click()
    await expect(a.get_by_role("status")).to_have_text("Failed: declined", timeout=TIMEOUT_MS)
    await run.shot(a, "09-failed-declined")
    # too many digits for max_digi_llam_sal (12 in this config)
    await a.get_by_role("textbox", name="Number").fill("0034912345678901")
    await a.get_by_role("button", name="Call", exact=True).click()
    await expect(a.get_by_role("status")).to_have_text("Failed: number too long (at most 12 digits)")
    # Spanish
    await b.goto(f"{base}/?lang=es")
    await status_is(b, "Preparado")
    await expect(b.get_by_role("button", name="Llamar", exact=True)).to_be_visible()
    await run.shot(b, "10-ready-es")
    # logout: back to the login form, and the web extension is no longer registered
    await a.get_by_role("button", name="Log out", exact=True).click()
    await expect(a.get_by_role("button", name="Log in", exact=True)).to_be_visible(timeout=TIMEOUT_MS)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        regs = ctl_json(server, "registrations")["registrations"]
        if not any(str(r["aor"]).startswith("sip:7000@") for r in regs):
            break
        await asyncio.sleep(0.2)
    run.check("logout removed the web extension's registration",
              not any(str(r["aor"]).startswith("sip:7000@") for r in regs))
    run.check("no page errors", not errors, errors)
    await ctx_a.close()
    await ctx_b.close()


async def rising(page: Page, seconds: float = 2.0) -> tuple[int, int]:
    first = await inbound_packets(page)
    await asyncio.sleep(seconds)
    return first, await inbound_packets(page)


async def inbound_total(page: Page) -> int:
    """Audio packets received by every call of the page, over all its inbound streams (a
    transfer may change the stream's SSRC; Chrome may drop the old one's statistics)."""
    total = 0
    for call in await pc_state(page):
        total += sum(int(packets or 0) for _, packets in call.get("inbound") or [])
    return total


async def flowing(page: Page, seconds: float = 2.0, within: float = 10.0, least: int = 50) -> tuple[int, int, bool]:
    """Whether the page's inbound audio packets rise by more than `least` in a window of
    `seconds`, trying windows for up to `within` seconds (a transfer's new DTLS
    association takes a moment): (first, last, ok)."""
    deadline = time.monotonic() + within
    first = await inbound_total(page)
    while True:
        await asyncio.sleep(seconds)
        second = await inbound_total(page)
        if second - first > least:
            return first, second, True
        if time.monotonic() > deadline:
            return first, second, False
        first = second


async def scenario_media(run: Run, server: Server, browser: Any, work: Path) -> None:
    """Browser ↔ baresip through rtpengine (media.backend rtpengine): the browser's
    DTLS-SRTP with ICE on one side, the phone's plain RTP on the other, audio both ways;
    then the phone calls the user and the browser answers; then two browsers call each
    other through rtpengine."""
    port = server.ports[("http", "https")]
    base = f"https://127.0.0.1:{port}"
    account = f"<sip:6142@127.0.0.1:{server.sip_port('udp')}>;auth_pass=pw-6142;regint=60"
    phone = Baresip(work, "phone", 600.0, account=account, seconds=60, quit_after=100)
    try:
        phone.register()
        ctx = await browser.new_context(ignore_https_errors=True, viewport={"width": 460, "height": 860})
        page = await ctx.new_page()
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text[:300]}"))
        await login(page, base, "6140", "pw-6140")
        await status_is(page, "Ready")
        await page.get_by_role("textbox", name="Number").fill("6142")
        await page.get_by_role("button", name="Call", exact=True).click()
        await status_is(page, "Connected", 20000)
        first, second = await rising(page, 3.0)
        run.check("browser -> baresip via rtpengine: the browser receives the phone's audio (inbound packets rising)",
                  second > max(first, 50), (first, second))
        if os.environ.get("WEBFON_VERBOSE"):
            print("\n".join(console[-30:]))
            print(await page.evaluate("""() => { const c = window.webfon.state.phone.calls[0]; const pc = c && c.session.sessionDescriptionHandler.peerConnection;
              return pc ? [pc.iceConnectionState, pc.connectionState, pc.localDescription && pc.localDescription.sdp, pc.remoteDescription && pc.remoteDescription.sdp].join("\\n----\\n") : "no pc"; }"""))
        await run.shot(page, "11-connected-via-rtpengine")
        await page.get_by_role("button", name="Hang up", exact=True).click()
        await status_is(page, "Call ended")
        phone.wait_event("CALL_CLOSED", 10)
        media = ctl_json(server, "media")
        run.check("the call was anchored in rtpengine", int(media.get("anchored", 0)) >= 1, media.get("anchored"))
        await asyncio.sleep(0.5)
        recordings = phone.recordings()
        samples = read_samples(recordings[-1]) if recordings else []
        share = tone_share(samples[4000:], 1000.0) if len(samples) > 8000 else 0.0
        run.check("baresip's recording holds the browser's 1000 Hz tone", share > 0.3,
                  {"recordings": [p.name for p in recordings], "samples": len(samples), "share_1000hz": round(share, 3),
                   "share_600hz": round(tone_share(samples[4000:], 600.0), 3) if len(samples) > 8000 else None})
        # the phone calls the user: the browser rings, answers, audio flows
        phone.command("dial", f"sip:6140@127.0.0.1:{server.sip_port('udp')}")
        await status_is(page, "Ringing", 15000)
        await page.get_by_role("button", name="Answer", exact=True).click()
        await status_is(page, "Connected")
        first, second = await rising(page, 3.0)
        run.check("baresip -> browser via rtpengine: audio reaches the browser", second > max(first, 50), (first, second))
        await page.get_by_role("button", name="Hang up", exact=True).click()
        await status_is(page, "Call ended")
        # browser <-> browser: anchored in rtpengine too (both sides get the browser flags)
        ctx_b = await browser.new_context(ignore_https_errors=True, viewport={"width": 460, "height": 860})
        other = await ctx_b.new_page()
        await login(other, base, "6143", "pw-6143")
        await status_is(other, "Ready")
        await page.get_by_role("textbox", name="Number").fill("6143")
        await page.get_by_role("button", name="Call", exact=True).click()
        await status_is(other, "Ringing")
        await other.get_by_role("button", name="Answer", exact=True).click()
        await status_is(page, "Connected")
        got_a, got_b = await flowing(page), await flowing(other)
        calls = ctl_json(server, "calls")["calls"]
        run.check("browser <-> browser via rtpengine: anchored (webrtc), audio both ways",
                  got_a[2] and got_b[2] and [x.get("media") for x in calls] == ["anchored (webrtc)"],
                  {"a": got_a, "b": got_b, "media": [x.get("media") for x in calls]})
        await page.get_by_role("button", name="Hang up", exact=True).click()
        await status_is(other, "Call ended")
        await ctx_b.close()
        await ctx.close()
    finally:
        phone.close()


def cdr_records(server: Server) -> list[dict[str, Any]]:
    return list(ctl_json_fmt(server, "cdr", "--since", "0", "--format", "json", "--limit", "1000").get("calls", []))


def ctl_json_fmt(server: Server, *args: str) -> Any:
    out = subprocess.run([sys.executable, "-m", "vivait_sip", *server.ctl_args, *args],
                         capture_output=True, text=True, timeout=20)
    return json.loads(out.stdout or "{}")


def wait_cdr_with(server: Server, text: str, timeout: float = 10.0, *, seen: set[str] | None = None) -> dict[str, Any] | None:
    """The first CDR whose JSON holds `text` (and whose call is not in `seen`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in cdr_records(server):
            if text in str(record.get("hangup_cause")) and (seen is None or str(record.get("call_uuid")) not in seen):
                return record
        time.sleep(0.5)
    print("NOTE cdr causes:", [(r.get("call_uuid"), r.get("hangup_cause")) for r in cdr_records(server)], flush=True)
    return None


async def wait_closed(phone: Baresip, timeout: float) -> float:
    """Seconds until the phone's call closed (inf if it did not within `timeout`)."""
    started = time.monotonic()
    try:
        await asyncio.to_thread(phone.wait_event, "CALL_CLOSED", timeout)
    except AssertionError:
        return math.inf
    return time.monotonic() - started


async def scenario_builtin(run: Run, server: Server, browser: Any, work: Path, tone: Path) -> None:
    """The built-in media backend bridges the browser (ICE, DTLS-SRTP) and baresip (plain
    RTP): the browser calls a phone that auto-answers (audio both ways); the phone calls
    the user number: the browser rings and the hard extension does not, it answers,
    holds, resumes and transfers to a second phone; a browser whose tab closes, and one
    whose Chromium is killed, end their calls on the SIP side within 10 s."""
    port = server.ports[("http", "https")]
    base = f"https://127.0.0.1:{port}"
    udp = server.sip_port("udp")
    phone = Baresip(work, "phone", 400.0, account=f"<sip:6142@127.0.0.1:{udp}>;auth_pass=pw-6142;regint=60",
                    seconds=90, quit_after=170)
    target = Baresip(work, "target", 700.0, account=f"<sip:6141@127.0.0.1:{udp}>;auth_pass=pw-6141;regint=60",
                     seconds=90, quit_after=170)
    hard = Baresip(work, "hard", 500.0, account=f"<sip:5140@127.0.0.1:{udp}>;auth_user=6140;auth_pass=pw-6140;regint=60",
                   auto_answer=False, seconds=90, quit_after=170)
    try:
        for bare in (phone, target, hard):
            bare.register()
        ctx = await browser.new_context(ignore_https_errors=True, viewport={"width": 460, "height": 860})
        page = await ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await login(page, base, "6140", "pw-6140")
        await status_is(page, "Ready")
        # 1. the browser calls the phone
        await page.get_by_role("textbox", name="Number").fill("6142")
        await page.get_by_role("button", name="Call", exact=True).click()
        await status_is(page, "Connected", 20000)
        first, second = await rising(page, 3.0)
        run.check("browser -> baresip via the built-in bridge: the browser receives the phone's audio (inbound packets rising)",
                  second > max(first, 50), (first, second))
        await run.shot(page, "16-connected-via-builtin")
        media = ctl_json(server, "media")
        run.check("the call is anchored in the built-in backend", media.get("backend") == "builtin"
                  and int(media.get("anchored", 0)) >= 1, {k: media.get(k) for k in ("backend", "anchored", "sessions")})
        await page.get_by_role("button", name="Hang up", exact=True).click()
        await status_is(page, "Call ended")
        phone.wait_event("CALL_CLOSED", 10)
        await asyncio.sleep(0.5)
        recordings = phone.recordings()
        samples = read_samples(recordings[-1]) if recordings else []
        share = tone_share(samples[4000:], 1000.0) if len(samples) > 8000 else 0.0
        run.check("baresip's recording holds the browser's 1000 Hz tone (built-in bridge)", share > 0.3,
                  {"recordings": [p.name for p in recordings], "samples": len(samples), "share_1000hz": round(share, 3)})
        # 2. the phone calls the user: the browser rings, the hard extension does not
        phone.drain(0.2)
        hard.drain(0.2)
        phone.command("dial", f"sip:6140@127.0.0.1:{udp}")
        await status_is(page, "Ringing", 15000)
        await run.shot(page, "17-incoming-builtin")
        hard_events = [e.get("type") for e in hard.drain(1.0)]
        run.check("the hard extension does not ring while the browser is registered", "CALL_INCOMING" not in hard_events,
                  hard_events)
        await page.get_by_role("button", name="Answer", exact=True).click()
        await status_is(page, "Connected")
        first, second = await rising(page, 2.0)
        run.check("baresip -> browser via the built-in bridge: audio reaches the browser", second > max(first, 50),
                  (first, second))
        await page.get_by_role("button", name="Hold", exact=True).click()
        await status_is(page, "On hold")
        await run.shot(page, "18-on-hold-builtin")
        await page.get_by_role("button", name="Resume", exact=True).click()
        await status_is(page, "Connected")
        first, second = await rising(page, 2.0)
        run.check("after hold and resume the browser receives audio again", second > first + 50, (first, second))
        target.drain(0.2)
        await page.get_by_role("button", name="Transfer", exact=True).click()
        await page.get_by_role("textbox", name="Transfer to").fill("6141")
        await run.shot(page, "19-transfer-builtin")
        await page.get_by_role("button", name="Transfer now", exact=True).click()
        await status_is(page, "Call ended", 20000)
        try:
            target.wait_event("CALL_ESTABLISHED", 15)
            joined = True
        except AssertionError:
            joined = False
        still = [e.get("type") for e in phone.drain(1.5)]
        run.check("blind transfer: the second phone answered and the caller stays in the call",
                  joined and "CALL_CLOSED" not in still, {"joined": joined, "caller_events": still})
        target.command("hangup")
        phone.wait_event("CALL_CLOSED", 10)
        # 3. the tab closes mid-call: the phone gets BYE within 10 s, the CDR says why
        await page.get_by_role("textbox", name="Number").fill("6142")
        await page.get_by_role("button", name="Call", exact=True).click()
        await status_is(page, "Connected", 20000)
        await asyncio.sleep(1.0)
        phone.drain(0.1)
        await page.close()
        took = await wait_closed(phone, 15)
        record = await asyncio.to_thread(wait_cdr_with, server, "WebRTC:", 15)
        run.check("closing the tab mid-call ends the call on the SIP side within 10 s, the CDR says why",
                  took < 10 and record is not None,
                  {"seconds": round(took, 1), "cdr_cause": (record or {}).get("hangup_cause") or record})
        run.check("no page errors (built-in)", not errors, errors)
        await ctx.close()
        # 4. Chromium killed mid-call (a second browser, reached over CDP, SIGKILLed)
        await scenario_killed(run, server, work, tone, phone)
    finally:
        for bare in (phone, target, hard):
            bare.close()


async def scenario_killed(run: Run, server: Server, work: Path, tone: Path, phone: Baresip) -> None:
    port = server.ports[("http", "https")]
    debug_port = 9333
    profile = tempfile.mkdtemp(prefix="chromium-killed-", dir=work)
    proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--use-file-for-fake-audio-capture={tone}",
                             f"--remote-debugging-port={debug_port}", f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with async_playwright() as p:
            browser = None
            for _ in range(50):
                try:
                    browser = await p.chromium.connect_over_cdp(f"http://127.0.0.1:{debug_port}")
                    break
                except Exception:
                    await asyncio.sleep(0.2)
            assert browser is not None, "chromium over CDP did not come up"
            ctx = browser.contexts[0] if browser.contexts else await browser.new_context(ignore_https_errors=True)
            page = await ctx.new_page()
            await login(page, f"https://127.0.0.1:{port}", "6140", "pw-6140")
            await status_is(page, "Ready")
            await page.get_by_role("textbox", name="Number").fill("6142")
            await page.get_by_role("button", name="Call", exact=True).click()
            await status_is(page, "Connected", 20000)
            first, second = await rising(page, 2.0)
            phone.drain(0.1)
            earlier = {str(r.get("call_uuid")) for r in await asyncio.to_thread(cdr_records, server)}
            proc.kill()
            took = await wait_closed(phone, 15)
        record = await asyncio.to_thread(wait_cdr_with, server, "WebRTC:", 15, seen=earlier)
        run.check("Chromium killed mid-call: the call ends on the SIP side within 10 s, the CDR says why",
                  took < 10 and second > first and record is not None,
                  {"seconds": round(took, 1), "packets": (first, second),
                   "cdr_cause": (record or {}).get("hangup_cause") or record})
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


async def call_and_answer(caller: Page, callee: Page, number: str) -> None:
    """`caller` dials `number`, `callee` rings and answers: both connected."""
    await caller.get_by_role("textbox", name="Number").fill(number)
    await caller.get_by_role("button", name="Call", exact=True).click()
    await status_is(callee, "Ringing")
    await callee.get_by_role("button", name="Answer", exact=True).click()
    await status_is(caller, "Connected")
    await status_is(callee, "Connected")


async def three_pages(
    browser: Any, base: str, errors: list[str], console: list[str] | None = None
) -> tuple[dict[str, Page], list[Any]]:
    """The webfon logged in and ready in three browser contexts: "a" 6140, "b" 6143, "c"
    6141; page errors (and, with `console`, console errors and warnings) collected."""
    pages: dict[str, Page] = {}
    contexts = []
    for who, user in (("a", "6140"), ("b", "6143"), ("c", "6141")):
        ctx = await browser.new_context(ignore_https_errors=True, viewport={"width": 460, "height": 900})
        contexts.append(ctx)
        page = await ctx.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        if console is not None:
            page.on("console", lambda m, who=who: console.append(f"{who} {m.type}: {m.text[:400]}") if m.type in ("error", "warning") else None)
        if os.environ.get("WEBFON_VERBOSE"):
            page.on("console", lambda m, who=who: print(f"CONSOLE {who} {m.type}: {m.text[:3000]}", flush=True))
        await login(page, base, user, f"pw-{user}")
        await status_is(page, "Ready")
        pages[who] = page
    return pages, contexts


async def scenario_waiting(run: Run, server: Server, browser: Any, backend: str = "builtin") -> None:
    """Call waiting and attended transfer between three browsers (anchored in the built-in
    relay or rtpengine, `backend`: media asserted after the join)."""
    via = "" if backend == "builtin" else f" ({backend})"
    port = server.ports[("http", "https")]
    base = f"https://127.0.0.1:{port}"
    errors, console = run.page_errors, run.page_console
    pages, contexts = await three_pages(browser, base, errors, console)
    a, b, c = pages["a"], pages["b"], pages["c"]

    async def dial(page: Page, number: str) -> None:
        await page.get_by_role("textbox", name="Number").fill(number)
        await page.get_by_role("button", name="Call", exact=True).click()

    # B calls A; while they talk, C calls A: A sees the call waiting, answers it (B held)
    await dial(b, "6140")
    await status_is(a, "Ringing")
    await a.get_by_role("button", name="Answer", exact=True).click()
    await status_is(a, "Connected")
    await dial(c, "6140")
    await expect(a.get_by_text("Call waiting", exact=True)).to_be_visible(timeout=TIMEOUT_MS)
    await expect(a.get_by_role("status")).to_have_text("Connected")
    await run.shot(a, "12-call-waiting")
    await a.get_by_role("button", name="Answer", exact=True).click()
    await status_is(c, "Connected")
    await expect(a.get_by_role("button", name="Resume Dani (6143)", exact=True)).to_be_visible(timeout=TIMEOUT_MS)
    await run.shot(a, "13-two-calls")
    run.check("answering the waiting call held the first", True)
    # A hangs up on C: back to B, on hold; resume
    await a.get_by_role("button", name="Hang up", exact=True).click()
    await status_is(c, "Call ended")
    await status_is(a, "On hold")
    await a.get_by_role("button", name="Resume", exact=True).click()
    # attended transfer: A consults C, then joins B and C.  Straight after the resume, as a
    # quick user would: sip.js resolves the resume once its re-INVITE is sent, and a hold
    # sent before its answer fails ("request pending"), so the webfon waits for the answer
    await a.get_by_role("button", name="Transfer", exact=True).click()
    await a.get_by_role("textbox", name="Transfer to").fill("6141")
    await a.get_by_role("button", name="Consult first", exact=True).click()
    await status_is(c, "Ringing")
    await c.get_by_role("button", name="Answer", exact=True).click()
    await expect(a.get_by_role("button", name="Complete transfer", exact=True)).to_be_visible(timeout=TIMEOUT_MS)
    await run.shot(a, "14-consulting")
    earlier = {str(r.get("call_uuid")) for r in await asyncio.to_thread(cdr_records, server)}
    await a.get_by_role("button", name="Complete transfer", exact=True).click()
    await status_is(a, "Call ended", 20000)
    await status_is(b, "Connected")
    await status_is(c, "Connected")
    # the media after the join: B kept its leg of the relay (its DTLS association), C was
    # moved into B's relay session on new ports with a DTLS identity of its own
    got_b, got_c = await flowing(b), await flowing(c)
    # evidence: each browser's DTLS state, selected ICE pair and inbound streams after the join
    run.note(f"peer connections after the join{via}", {"b": await pc_state(b), "c": await pc_state(c)})
    run.check(f"attended transfer between browsers{via}: B receives C's audio after the join (inbound packets rising)",
              got_b[2], got_b)
    run.check(f"attended transfer between browsers{via}: C receives B's audio after the join (inbound packets rising)",
              got_c[2], got_c)
    calls = ctl_json(server, "calls")["calls"]
    run.check(f"the joined call is anchored (webrtc){via}: each browser's one DTLS peer is the relay",
              [x.get("media") for x in calls] == ["anchored (webrtc)"] and bool(calls[0].get("linked_to")), calls)
    media = ctl_json(server, "media")
    run.check(f"ctl media{via}: one session left once B and C are joined (the consultation's deleted)",
              media.get("backend") == backend and int(media.get("sessions", -1)) == 1,
              {k: media.get(k) for k in ("backend", "sessions", "anchored_calls")})
    await run.shot(c, "15-transferred" if backend == "builtin" else f"15-transferred-{backend}")
    await b.get_by_role("button", name="Hang up", exact=True).click()
    await status_is(c, "Call ended")
    records = await asyncio.to_thread(wait_new_cdrs, server, earlier, 3)
    run.check(f"CDRs of the attended transfer{via}: the two calls A was in end 'transferred', the joined call is "
              "linked to them, anchored (webrtc), answered",
              sum(1 for r in records if r.get("hangup_cause") == "transferred") == 2
              and has_joined_call(records),
              cdr_view(records))
    await wait_sessions(run, server, f"ctl media{via}: no session left once the joined call ended")
    run.check(f"no page errors (waiting, transfer{via})", not errors, errors)
    for ctx in contexts:
        await ctx.close()


async def scenario_b2b(run: Run, server: Server, browser: Any, backend: str = "builtin") -> None:
    """Two browsers call each other through the built-in relay or rtpengine (`backend`;
    anchored, reason webrtc): audio both ways, `ctl calls` and the CDR say so; then a
    blind transfer from the page (REFER): the callee transfers the caller to a third
    browser, and the two joined browsers hear each other."""
    via = "" if backend == "builtin" else f" ({backend})"
    port = server.ports[("http", "https")]
    base = f"https://127.0.0.1:{port}"
    errors: list[str] = []
    pages, contexts = await three_pages(browser, base, errors)
    a, b, c = pages["a"], pages["b"], pages["c"]
    # 1. A calls B: anchored, audio both ways
    await call_and_answer(a, b, "6143")
    got_a, got_b = await flowing(a), await flowing(b)
    run.check(f"browser -> browser through the relay{via}: A receives B's audio (inbound packets rising)", got_a[2], got_a)
    run.check(f"browser -> browser through the relay{via}: B receives A's audio (inbound packets rising)", got_b[2], got_b)
    calls = ctl_json(server, "calls")["calls"]
    run.check(f"ctl calls{via}: the browser <-> browser call is anchored, reason webrtc",
              [x.get("media") for x in calls] == ["anchored (webrtc)"], calls)
    media = ctl_json(server, "media")
    run.check(f"ctl media: anchored in the {backend} backend", media.get("backend") == backend
              and int(media.get("anchored_calls", 0)) == 1, {k: media.get(k) for k in ("backend", "anchored", "anchored_calls")})
    first_uuid = str(calls[0]["call"]) if calls else ""
    await a.get_by_role("button", name="Hang up", exact=True).click()
    await status_is(a, "Call ended")
    await status_is(b, "Call ended")
    if backend == "builtin":
        record = await asyncio.to_thread(wait_cdr_of, server, first_uuid, "media_stats")
        extra = (record or {}).get("extra") or {}
        stats = extra.get("media_stats") or {}
        run.check("the CDR says anchored (webrtc) and the relay received both browsers' packets",
                  extra.get("media") == "anchored (webrtc)"
                  and all(int((stats.get(p) or {}).get("packets") or 0) > 50 for p in ("caller", "callee")),
                  {"media": extra.get("media"), "media_stats": stats})
    else:  # rtpengine's statistics (a query before the delete) are checked between phones (tests/media)
        record = await asyncio.to_thread(wait_cdr_of, server, first_uuid, "media")
        extra = (record or {}).get("extra") or {}
        run.check(f"the CDR says anchored (webrtc){via}, answered",
                  extra.get("media") == "anchored (webrtc)" and (record or {}).get("disposition") == "answered",
                  {k: (record or {}).get(k) for k in ("disposition", "hangup_cause")} | {"media": extra.get("media")})
    # 2. blind transfer from the page: A calls B, B transfers A to C ("Transfer now": REFER)
    await call_and_answer(a, b, "6143")
    await b.get_by_role("button", name="Transfer", exact=True).click()
    await b.get_by_role("textbox", name="Transfer to").fill("6141")
    earlier = {str(r.get("call_uuid")) for r in await asyncio.to_thread(cdr_records, server)}
    await b.get_by_role("button", name="Transfer now", exact=True).click()
    await status_is(c, "Ringing", 15000)
    await c.get_by_role("button", name="Answer", exact=True).click()
    await status_is(c, "Connected")
    await status_is(b, "Call ended", 20000)
    await status_is(a, "Connected")
    got_a, got_c = await flowing(a), await flowing(c)
    if not (got_a[2] and got_c[2]):
        run.note(f"peer connections after the blind transfer{via}", {"a": await pc_state(a), "c": await pc_state(c)})
    run.check(f"blind transfer between browsers{via}: A (kept) receives C's audio after the transfer", got_a[2], got_a)
    run.check(f"blind transfer between browsers{via}: C (the target) receives A's audio", got_c[2], got_c)
    calls = ctl_json(server, "calls")["calls"]
    run.check(f"the transferred call is anchored (webrtc){via}", [x.get("media") for x in calls] == ["anchored (webrtc)"]
              and bool(calls[0].get("linked_to")), calls)
    media = ctl_json(server, "media")
    run.check(f"ctl media{via}: one session, handed over to the transfer's call",
              int(media.get("sessions", -1)) == 1, {k: media.get(k) for k in ("backend", "sessions", "anchored_calls")})
    await run.shot(c, "20-blind-transferred-browsers" if backend == "builtin" else f"20-blind-transferred-{backend}")
    await c.get_by_role("button", name="Hang up", exact=True).click()
    await status_is(a, "Call ended")
    records = await asyncio.to_thread(wait_new_cdrs, server, earlier, 2)
    run.check(f"CDRs of the blind transfer{via}: A -> B ends 'transferred', the transfer's call is linked to it, "
              "anchored (webrtc), answered",
              any(r.get("hangup_cause") == "transferred" for r in records)
              and has_joined_call(records),
              cdr_view(records))
    await wait_sessions(run, server, f"ctl media{via}: no session left once the transferred call ended")
    run.check(f"no page errors (browser <-> browser{via})", not errors, errors)
    for ctx in contexts:
        await ctx.close()


def has_joined_call(records: list[dict[str, Any]]) -> bool:
    """A transfer's call among `records`: linked to the call it came from, answered, anchored (webrtc)."""
    return any(r.get("linked_to") and r.get("disposition") == "answered"
               and (r.get("extra") or {}).get("media") == "anchored (webrtc)" for r in records)


def cdr_view(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a failed CDR check shows of each record."""
    return [{k: r.get(k) for k in ("call_uuid", "caller", "callee", "disposition", "hangup_cause", "linked_to")}
            | {"media": (r.get("extra") or {}).get("media")} for r in records]


def wait_new_cdrs(server: Server, seen: set[str], count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The CDRs of calls not in `seen`, once there are at least `count` of them."""
    deadline = time.monotonic() + timeout
    while True:
        records = [r for r in cdr_records(server) if str(r.get("call_uuid")) not in seen]
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


async def wait_sessions(run: Run, server: Server, name: str, timeout: float = 5.0) -> None:
    """Check that the media backend holds no session (within `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        media = ctl_json(server, "media")
        if int(media.get("sessions", -1)) == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    run.check(name, int(media.get("sessions", -1)) == 0, {k: media.get(k) for k in ("backend", "sessions")})


def wait_cdr_of(server: Server, call_uuid: str, key: str, timeout: float = 10.0) -> dict[str, Any] | None:
    """The CDR of `call_uuid` once its `extra` has `key` (the media statistics are amended
    after the record is written)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in cdr_records(server):
            if str(record.get("call_uuid")) == call_uuid and key in (record.get("extra") or {}):
                return record
        time.sleep(0.5)
    return next((r for r in cdr_records(server) if str(r.get("call_uuid")) == call_uuid), None)


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--scenario", action="append", default=None,
                        choices=["ui", "media", "waiting", "builtin", "b2b", "rtpe-waiting", "rtpe-b2b"])
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Run(out)
    work = Path(tempfile.mkdtemp(prefix="webfon-browser-"))
    tone = write_tone(work / "tone-1000.wav", 1000.0, 30, rate=48000)  # Chromium's fake capture
    config = base_config(smart_buttons=BUTTONS, max_digi_llam_sal=12)
    scenarios = args.scenario or ["ui"]
    daemon: Rtpengine | None = None
    if "media" in scenarios or any(s.startswith("rtpe-") for s in scenarios):
        daemon = await Rtpengine().start()
        config["media"] = {"backend": "rtpengine", "rtpengine": {"daemons": [daemon.address]}}
    elif "builtin" in scenarios:
        config["media"] = {"backend": "builtin", "workers": 1, "port_min": 43000, "port_max": 43999}
        config["registrar"]["algorithms"] = ["MD5"]  # baresip does MD5 only
    server = Server(work / "srv", config, loopback_args(http=True, tls=False))
    (work / "srv").mkdir()
    server.start()
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=[*FLAGS, f"--use-file-for-fake-audio-capture={tone}"])
            try:
                for name in scenarios:
                    try:
                        if name == "media":
                            await scenario_media(run, server, browser, work)
                        elif name == "builtin":
                            await scenario_builtin(run, server, browser, work, tone)
                        elif name == "waiting":
                            await scenario_waiting(run, server, browser)
                        elif name == "b2b":
                            await scenario_b2b(run, server, browser)
                        elif name == "rtpe-waiting":
                            await scenario_waiting(run, server, browser, "rtpengine")
                        elif name == "rtpe-b2b":
                            await scenario_b2b(run, server, browser, "rtpengine")
                        else:
                            await scenario_ui(run, server, browser)
                    except Exception as exc:
                        traceback.print_exc()
                        run.check(f"scenario {name} ran to its end", False, repr(exc)[:500])
                        if run.page_errors or run.page_console:
                            run.note("the pages' errors and console", run.page_errors[-20:], run.page_console[-40:])
            finally:
                await browser.close()
    finally:
        server.stop()
        log = "\n".join(server.output[-60:])
        (out / "server.log").write_text("\n".join(server.output))
        if os.environ.get("WEBFON_VERBOSE"):
            print(log)
        if daemon is not None:
            shutil.copy(daemon.log, out / "rtpengine.log")
            daemon.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("RESULT " + json.dumps({"checks": run.checks, "notes": run.notes, "screenshots": run.shots}), flush=True)
    return 0 if run.checks and all(c["ok"] for c in run.checks) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
