"""Structured logs: `key=value` lines (grep-friendly) or one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"ts={ts}.{int(record.msecs):03d}Z level={record.levelname.lower()} logger={record.name} {record.getMessage()}"
        if record.exc_info:
            line += " exc=" + json.dumps(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    """Message text of the form `k=v k2="v 2"` is split into JSON fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        out.update(split_kv(record.getMessage()))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def split_kv(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    rest = text.strip()
    while rest:
        key, eq, tail = rest.partition("=")
        if not eq or " " in key:
            fields["msg"] = rest
            break
        if tail.startswith(("'", '"')):
            quote = tail[0]
            end = tail.find(quote, 1)
            end = len(tail) if end < 0 else end
            fields[key] = tail[1:end]
            rest = tail[end + 1 :].lstrip()
        else:
            value, _, rest = tail.partition(" ")
            fields[key] = value
            rest = rest.lstrip()
    return fields


def setup_logging(level: str = "info", fmt: str = "kv") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class Throttle:
    """At most `per_second` lines a second per event key; the rest are counted, not written.

    Input-driven events (a malformed packet, a failed login, a refused connection) would
    otherwise write one line per packet: a flood of bad input becomes a flood of logs.
    The next line written for that key reports how many were suppressed.
    """

    def __init__(self, per_second: int = 10, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = per_second
        self.clock = clock
        self._window: dict[str, tuple[int, int, int]] = {}  # key -> (second, written, suppressed)

    def log(self, logger: logging.Logger, level: int, key: str, msg: str, *args: object) -> None:
        if not logger.isEnabledFor(level):
            return
        second = int(self.clock())
        current, written, suppressed = self._window.get(key, (second, 0, 0))
        if current != second:
            current, written = second, 0
        if written >= self.per_second:
            self._window[key] = (current, written, suppressed + 1)
            return
        self._window[key] = (current, written + 1, 0)
        if suppressed:
            msg += " suppressed_since_last=%d"
            args = (*args, suppressed)
        logger.log(level, msg, *args)


throttle = Throttle()
