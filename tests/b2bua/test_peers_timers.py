"""Reliable provisionals (RFC 3262) and session timers (RFC 4028) through the B2BUA,
against SIPp on both sides, with one and two workers.

* A callee that requires 100rel: it gets its PRACK from the B2BUA; a caller that
  supports 100rel gets the 180 reliably (Require: 100rel, RSeq) and PRACKs it; a caller
  that does not gets a plain 180 and the call still goes through.
* Session timers (`sip.session_timers` 90 s, the RFC's minimum): the caller refreshes
  with UPDATE and the refresh crosses to the callee (with Session-Expires) and back.
* A caller that asked to refresh and goes silent: the B2BUA keeps refreshing the
  callee's leg itself (UPDATE at 45 s) and at 60 s (RFC 4028 §10: 90 - min(32, 90/3))
  ends the call with BYE both ways.  This test waits those 60 s: the RFC allows no
  interval under 90 s (Min-SE floor), a phone never sees a shorter one, and nothing
  faster would be the real behaviour.  Bounded at ~65 s per worker count.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import Server
from peer_env import (
    Sipp,
    base_config,
    check_times,
    header,
    register,
    sipp,
    start_server,
    user_args,
    wait_cdrs,
    wait_no_calls,
    workers,
)

__all__ = ["workers"]

pytestmark = pytest.mark.timeout(60)

SESSION_S = 90


@pytest.fixture
def server(tmp_path: Path, workers: int) -> Server:
    config = base_config(workers)
    config["sip"]["session_timers"] = {"expires_s": SESSION_S, "min_se_s": SESSION_S}
    srv = start_server(tmp_path / "srv", config)
    yield srv  # type: ignore[misc]
    srv.stop()


def callee(server: Server, tmp: Path, scenario: str) -> Sipp:
    """A SIPp UAS registered as user 6141's phone."""
    uas = sipp("callee", tmp, scenario, "-m", "1", "-timeout", "90s").start()
    register(server, "6141", "pw-6141", uas.port)
    return uas


def caller(server: Server, tmp: Path, scenario: str, *args: str) -> Sipp:
    return sipp("caller", tmp, scenario, *user_args(server, "6140", "6141"), "-m", "1", "-timeout", "90s",
                "-timeout_error", *args).start(settle=0)


def test_prack_end_to_end_with_a_caller_that_supports_100rel(server: Server, tmp_path: Path) -> None:
    uas = callee(server, tmp_path, "b2b_uas_100rel.xml")
    uac = caller(server, tmp_path, "b2b_uac_100rel.xml", "-d", "500")
    assert uac.wait(20) == 0, uac.report()  # its checks: the 180 was reliable, the PRACK answered
    assert uas.wait(10) == 0, uas.report()  # its checks: Supported 100rel, the PRACK's RAck
    [ringing] = uac.received("SIP/2.0 180")
    assert header(ringing, "Require") == "100rel" and (header(ringing, "RSeq") or "").isdigit()
    [prack] = uas.received("PRACK")
    [invite] = uas.received("INVITE")
    assert header(prack, "RAck") == f"1 {(header(invite, 'CSeq') or '').split()[0]} INVITE"
    assert [header(m, "CSeq") for m in uac.received("SIP/2.0 200")] == ["3 PRACK", "2 INVITE", "4 BYE"]
    wait_no_calls(server)
    [record] = wait_cdrs(server, 1)
    assert record["disposition"] == "answered" and record["hangup_side"] == "caller"
    check_times(record, answered=True)


def test_a_caller_without_100rel_gets_a_plain_180(server: Server, tmp_path: Path) -> None:
    uas = callee(server, tmp_path, "b2b_uas_100rel.xml")
    uac = caller(server, tmp_path, "b2b_uac_auth.xml", "-d", "500")
    assert uac.wait(20) == 0, uac.report()
    assert uas.wait(10) == 0, uas.report()  # the callee still got its PRACK
    [ringing] = uac.received("SIP/2.0 180")
    assert header(ringing, "Require") is None and header(ringing, "RSeq") is None
    wait_no_calls(server)
    [record] = wait_cdrs(server, 1)
    assert record["disposition"] == "answered"


def test_a_session_refresh_crosses_the_bridge(server: Server, tmp_path: Path) -> None:
    uas = callee(server, tmp_path, "b2b_uas_timer.xml")
    uac = caller(server, tmp_path, "b2b_uac_timer.xml", "-d", "2000")  # refresh (UPDATE) after 2 s
    assert uac.wait(20) == 0, uac.report()  # its checks: Session-Expires 90;refresher=uac in both 200s
    assert uas.wait(10) == 0, uas.report()
    [invite] = uas.received("INVITE")
    assert header(invite, "Session-Expires") == str(SESSION_S) and header(invite, "Min-SE") == str(SESSION_S)
    assert "timer" in (header(invite, "Supported") or "")
    [update] = uas.received("UPDATE")
    assert header(update, "Session-Expires") == f"{SESSION_S};refresher=uac"  # the B2BUA refreshes this leg
    [refreshed] = uac.received("SIP/2.0 200")[-2:-1] or [""]
    assert header(refreshed, "CSeq") == "3 UPDATE", refreshed
    wait_no_calls(server)
    [record] = wait_cdrs(server, 1)
    assert record["disposition"] == "answered" and record["hangup_side"] == "caller"
    assert 2.5 < record["billable_s"] < 6


@pytest.mark.timeout(100)
def test_a_call_whose_refreshes_stop_is_ended_both_ways(server: Server, tmp_path: Path) -> None:
    uas = callee(server, tmp_path, "b2b_uas_timer.xml")
    uac = caller(server, tmp_path, "b2b_uac_timer_silent.xml")
    assert uac.wait(85) == 0, uac.report()  # the B2BUA's BYE came (within its 80 s wait)
    assert uas.wait(10) == 0, uas.report()  # a refresh (UPDATE) from the B2BUA, then BYE
    [(answered_at, _)] = uac.received_at("SIP/2.0 200")[:1]
    [(bye_to_caller, bye)] = uac.received_at("BYE")
    [(refresh_at, update)] = uas.received_at("UPDATE")
    [(bye_to_callee, bye2)] = uas.received_at("BYE")
    expiry = SESSION_S - min(32, SESSION_S / 3)  # 60 s: RFC 4028 §10
    assert expiry - 1 <= bye_to_caller - answered_at <= expiry + 3
    assert SESSION_S / 2 - 1 <= refresh_at - answered_at <= SESSION_S / 2 + 3  # the callee leg: we refresh
    assert header(update, "Session-Expires") == f"{SESSION_S};refresher=uac"
    assert abs(bye_to_callee - bye_to_caller) < 1
    assert "session_expired" in (header(bye2, "Reason") or "")
    wait_no_calls(server)
    [record] = wait_cdrs(server, 1)
    assert record["disposition"] == "answered"
    assert record["hangup_side"] == "system" and record["hangup_cause"] == "session_expired"
    check_times(record, answered=True)
    assert expiry - 1 <= record["billable_s"] <= expiry + 3
    assert header(bye, "Reason") is None or "session" in (header(bye, "Reason") or "")
