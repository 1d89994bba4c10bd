"""Structured log formats and the per-event throttle that keeps floods out of the logs."""

from __future__ import annotations

import json
import logging

from vivait_sip.logs import JsonFormatter, KeyValueFormatter, Throttle, split_kv


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
    assert "level=info logger=vivait_sip.core event=x peer=udp:1.2.3.4:5 reason='bad Via'" in kv
    data = json.loads(JsonFormatter().format(record))
    assert data["event"] == "x" and data["peer"] == "udp:1.2.3.4:5" and data["reason"] == "bad Via"
    assert split_kv("no pairs here") == {"msg": "no pairs here"}
