"""Structured logs: `key=value` lines (grep-friendly) or one JSON object per line.

Values in log lines often come from the network (usernames, reasons quoting a header,
exception texts), so they are never written raw: every argument interpolated into a
message is passed through `log_value`, which leaves plain tokens (numbers, addresses,
names) as they are and writes anything else as a double-quoted JSON string, escapes
included, capped at `MAX_VALUE_CHARS`.  A value can therefore never end its field,
start a new `key=value` pair, or a new line, and a line that an anchored grep or a
key=value parser takes for an event is one the program wrote (docs/security.md).

Only the message template (a literal in our code) is trusted.  Lines from other
libraries' loggers are written whole as one quoted `msg` value.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable, Mapping

MAX_VALUE_CHARS = 256
# A value made only of these needs no quoting: none of them can end a field (space),
# start a quoted one (" '), or separate a key from its value (=).
_PLAIN_RE = re.compile(r"[A-Za-z0-9._:/@+\-\[\],;%~*!?&#()]+")
# What JSON leaves unescaped but a terminal, `str.splitlines` or a log shipper may
# still treat as a line break or hide (other control and separator characters), and
# lone surrogates (bytes a transport decoded with surrogateescape), which cannot be written.
_UNSAFE_RE = re.compile(r"[\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff\ud800-\udfff]")
_RESERVED = ("ts", "level", "logger")


def quote(text: str) -> str:
    """`text` as a double-quoted JSON string with every control character escaped."""
    return _UNSAFE_RE.sub(_escape_char, json.dumps(text, ensure_ascii=False))


def _escape_char(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def log_value(value: object, conversion: str = "s") -> str:
    """How one untrusted value appears in a line: a plain token, or quoted and escaped."""
    text = repr(value) if conversion == "r" and not isinstance(value, str) else str(value)
    if len(text) > MAX_VALUE_CHARS:
        text = f"{text[:MAX_VALUE_CHARS]}...(+{len(text) - MAX_VALUE_CHARS} chars)"
    elif _PLAIN_RE.fullmatch(text):
        return text
    return quote(text)


class _Escaped:
    """An argument as `%s` and `%r` format it: through `log_value`."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return log_value(self.value)

    def __repr__(self) -> str:
        return log_value(self.value, "r")


def _escape_arg(value: object) -> object:
    # Numbers stay numbers (%d, %.0f need them) and cannot carry text.
    if isinstance(value, (int, float)):
        return value
    return _Escaped(value)


def safe_message(record: logging.LogRecord) -> str:
    """The record's message with every argument escaped; a foreign logger's line quoted whole."""
    if not record.name.startswith("vivait_sip"):
        return "msg=" + quote(record.getMessage())
    msg = str(record.msg)
    args = record.args
    if args:
        if isinstance(args, Mapping):
            msg = msg % {k: _escape_arg(v) for k, v in args.items()}
        else:
            msg = msg % tuple(_escape_arg(a) for a in args)
    # Our templates are literals; this only guards against a future f-string in one.
    if "\n" in msg or "\r" in msg:
        msg = msg.replace("\r", "\\r").replace("\n", "\\n")
    return msg


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"ts={ts}.{int(record.msecs):03d}Z level={record.levelname.lower()} logger={record.name} {safe_message(record)}"
        if record.exc_info:
            line += " exc=" + quote(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    """Message text of the form `k=v k2="v 2"` is split into JSON fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        for key, value in split_kv(safe_message(record)).items():
            if key not in _RESERVED:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        # The characters `quote` escapes can only occur inside JSON strings here.
        return _UNSAFE_RE.sub(_escape_char, json.dumps(out, ensure_ascii=False))


_DECODER = json.JSONDecoder()


def split_kv(text: str) -> dict[str, str]:
    """Parse `k=v k2="v 2"` (values as `log_value` writes them) into a dict.

    A double-quoted value is a JSON string (escapes decoded); anything that is not a
    `key=value` pair ends the parsing and the rest is kept whole under `msg`.
    """
    fields: dict[str, str] = {}
    rest = text.strip()
    while rest:
        key, eq, tail = rest.partition("=")
        if not eq or not key or " " in key or '"' in key:
            fields["msg"] = rest
            break
        if tail.startswith('"'):
            try:
                value, end = _DECODER.raw_decode(tail)
            except ValueError:
                fields["msg"] = rest
                break
            fields[key] = str(value)
            rest = tail[end:].lstrip()
        elif tail.startswith("'"):
            end = tail.find("'", 1)
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
