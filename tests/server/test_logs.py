"""Structured log formats and the per-event throttle that keeps floods out of the logs."""

from __future__ import annotations

import json
import logging
import re

import pytest

from vivait_sip.logs import (
    MAX_VALUE_CHARS,
    JsonFormatter,
    KeyValueFormatter,
    Throttle,
    log_value,
    split_kv,
)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_throttle_caps_lines_per_second_and_reports_the_suppressed() -> None:
    now = [100.2]
    throttle = Throttle(per_second=3, clock=lambda: now[0])
    logger = logging.getLogger("test.throttle")
    logger.setLevel(logging.INFO)
    capture = _Capture()
    logger.addHandler(capture)
    try:
        for n in range(50):
            throttle.log(logger, logging.INFO, "flood", "event=bad n=%d", n)
        throttle.log(logger, logging.INFO, "other", "event=other")
        assert capture.lines == ["event=bad n=0", "event=bad n=1", "event=bad n=2", "event=other"]
        now[0] = 101.0
        throttle.log(logger, logging.INFO, "flood", "event=bad n=%d", 99)
        assert capture.lines[-1] == "event=bad n=99 suppressed_since_last=47"
    finally:
        logger.removeHandler(capture)


def test_formats_are_parseable() -> None:
    record = logging.LogRecord("vivait_sip.core", logging.INFO, __file__, 1, "event=x peer=%s reason=%r", ("udp:1.2.3.4:5", "bad Via"), None)
    kv = KeyValueFormatter().format(record)
    assert 'level=info logger=vivait_sip.core event=x peer=udp:1.2.3.4:5 reason="bad Via"' in kv
    data = json.loads(JsonFormatter().format(record))
    assert data["event"] == "x" and data["peer"] == "udp:1.2.3.4:5" and data["reason"] == "bad Via"
    assert split_kv("no pairs here") == {"msg": "no pairs here"}


# What docs/security.md tells operators to grep: the event right after the three fields
# the program writes itself, at the start of the line.
REAL_BAN = re.compile(r"^ts=\S+ level=\S+ logger=\S+ event=auth_ban( |$)")
FORGERY = 'x event=auth_ban source=203.0.113.9 failures=20 until=2026-01-01T00:00:00+00:00'


def _record(msg: str, args: tuple[object, ...], name: str = "vivait_sip.registrar.security") -> logging.LogRecord:
    return logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)


@pytest.mark.parametrize(
    "user",
    [
        FORGERY,
        FORGERY + "\nts=2026-01-01T00:00:00.000Z level=warning logger=vivait_sip.registrar.security event=auth_ban source=203.0.113.9",
        FORGERY + "\r\u2028\u0085event=auth_ban",
        'a" event=auth_ban source="203.0.113.9',
        "event=auth_ban",
        "\\\" event=auth_ban \\",
    ],
)
def test_a_hostile_value_cannot_forge_an_event(user: str) -> None:
    record = _record("event=auth_failure source=%s user=%s user_failures=%d", ("192.0.2.1", user, 1))
    line = KeyValueFormatter().format(record)
    assert "\n" not in line and "\r" not in line and len(line.splitlines()) == 1
    assert not REAL_BAN.search(line)
    fields = split_kv(line)
    assert fields["event"] == "auth_failure" and fields["source"] == "192.0.2.1"
    assert fields["user"] == user  # read back exactly, escapes decoded
    assert fields["user_failures"] == "1"
    data = json.loads(JsonFormatter().format(record))
    assert data["event"] == "auth_failure" and data["source"] == "192.0.2.1" and data["user"] == user


def test_real_ban_matches_the_recipe() -> None:
    record = _record("event=auth_ban source=%s failures=%d until=%s", ("192.0.2.7", 20, "2026-11-26T05:10:00+00:00"))
    line = KeyValueFormatter().format(record)
    assert REAL_BAN.search(line)
    assert line.endswith("event=auth_ban source=192.0.2.7 failures=20 until=2026-11-26T05:10:00+00:00")


def test_values_are_plain_tokens_or_quoted_and_capped() -> None:
    assert log_value("192.0.2.1") == "192.0.2.1"
    assert log_value("udp:[2001:db8::1]:5060") == "udp:[2001:db8::1]:5060"
    assert log_value("") == '""'
    assert log_value("a=b") == '"a=b"'
    assert log_value("it's") == '"it\'s"'
    assert log_value(None) == "None"
    long = log_value("x" * 5000)
    assert long.startswith('"') and long.endswith('...(+4744 chars)"')
    assert len(long) < MAX_VALUE_CHARS + 30
    # Lone surrogates (undecodable bytes) and invisible separators are escaped.
    assert log_value("a\udcffb\u2028") == '"a\\udcffb\\u2028"'


def test_other_libraries_lines_are_quoted_whole() -> None:
    line = KeyValueFormatter().format(_record("Error handling request from %s", ("x\nevent=auth_ban",), name="aiohttp.server"))
    assert line.endswith('logger=aiohttp.server msg="Error handling request from x\\nevent=auth_ban"')
    assert not REAL_BAN.search(line)
