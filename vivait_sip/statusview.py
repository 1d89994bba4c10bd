"""`vivait-sip ctl status` as text: the JSON of `/api/status`, nested data as tables.

Scalars print as `name: value`; a dict of scalars as an aligned two-column block; a
list of dicts (the workers) or a dict of dicts as a table with one column per key; a
list of scalars one item a line.  Deeper levels are sections indented under their
parent.  Values from the network (usernames, sources) never reach the terminal raw:
control characters are escaped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_ROWS = 20  # rows shown of a long table; the rest is counted
HEAD_KEYS = ("version", "native", "pid", "uptime_s", "listeners", "connections", "transactions", "transactions_completed_waiting")


def _text(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value) if value else "-"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_text(v)}" for k, v in value.items()) if value else "-"
    return _CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def _is_scalar(value: object) -> bool:
    return not isinstance(value, (Mapping, list, tuple))


def table(rows: Sequence[Mapping[str, object]], indent: str = "  ", first: str | None = None) -> list[str]:
    """Aligned columns; the header is the union of the rows' keys in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    if first is not None and first in columns:
        columns.remove(first)
        columns.insert(0, first)
    shown = list(rows[:MAX_ROWS])
    cells = [[_text(row.get(c)) for c in columns] for row in shown]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = [indent + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += [indent + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    if len(rows) > MAX_ROWS:
        lines.append(f"{indent}... and {len(rows) - MAX_ROWS} more")
    return lines


def pairs(items: Mapping[str, object], indent: str = "  ") -> list[str]:
    """A dict of scalars as aligned `name  value` lines."""
    keys = list(items)[:MAX_ROWS] if len(items) > MAX_ROWS else list(items)
    width = max((len(str(k)) for k in keys), default=0)
    lines = [f"{indent}{_text(k).ljust(width)}  {_text(items[k])}" for k in keys]
    if len(items) > MAX_ROWS:
        lines.append(f"{indent}... and {len(items) - MAX_ROWS} more")
    return lines


def section(name: str, value: object, indent: str = "") -> list[str]:
    """One key of the status and what it holds, at `indent`."""
    inner = indent + "  "
    if _is_scalar(value):
        return [f"{indent}{name}: {_text(value)}"]
    if isinstance(value, (list, tuple)):
        if not value:
            return [f"{indent}{name}: none"]
        if all(isinstance(v, Mapping) for v in value):
            return [f"{indent}{name}:", *table(list(value), inner)]
        return [f"{indent}{name}:", *(f"{inner}{_text(v)}" for v in value)]
    assert isinstance(value, Mapping)
    if not value:
        return [f"{indent}{name}: none"]
    if all(isinstance(v, Mapping) for v in value.values()):
        rows = [{"name": k, **v} for k, v in value.items()]
        return [f"{indent}{name}:", *table(rows, inner, first="name")]
    scalars = {k: v for k, v in value.items() if _is_scalar(v) or (isinstance(v, (list, tuple)) and all(_is_scalar(x) for x in v))}
    out = [f"{indent}{name}:"]
    if scalars:
        out += pairs(scalars, inner)
    for key, item in value.items():
        if key not in scalars:
            out += section(key, item, inner)
    return out


def _duration(seconds: object) -> str:
    try:
        total = int(float(str(seconds)))
    except ValueError:
        return _text(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {text}" if days else text


def render_status(status: Mapping[str, object]) -> str:
    native = status.get("native")
    lines = [f"version: {_text(status.get('version'))}" + (f" ({_text(native)} modules)" if native else "")]
    lines.append(f"uptime: {_duration(status.get('uptime_s', 0))} ({_text(status.get('uptime_s'))} s)")
    if "pid" in status and not status.get("workers"):
        lines.append(f"pid: {_text(status.get('pid'))}")
    lines += section("listeners", status.get("listeners", []))
    lines.append(f"connections: {_text(status.get('connections'))}")
    waiting = status.get("transactions_completed_waiting")
    lines.append(f"transactions: {_text(status.get('transactions'))}" + (f" (completed, absorbing retransmissions: {_text(waiting)})" if waiting is not None else ""))
    workers = status.get("workers")
    if isinstance(workers, list) and workers:
        rows = [_worker_row(w) for w in workers if isinstance(w, Mapping)]
        lines += ["workers:", *table(rows)]
    for key in sorted(status):
        if key in (*HEAD_KEYS, "workers", "counters", "transport"):
            continue
        lines += section(key, status[key])
    counters = {**{f"transport_{k}": v for k, v in _mapping(status.get("transport")).items()}, **_mapping(status.get("counters"))}
    lines += ["counters:", *_all_pairs(dict(sorted(counters.items())))]
    return "\n".join(lines)


def _mapping(value: object) -> dict[str, object]:
    return dict(value) if isinstance(value, Mapping) else {}


def _all_pairs(items: dict[str, object]) -> list[str]:
    """Counters are all shown (a grep target), however many."""
    width = max((len(k) for k in items), default=0)
    return [f"  {k.ljust(width)}  {_text(v)}" for k, v in items.items()]


def _worker_row(worker: Mapping[str, object]) -> dict[str, object]:
    overload = _mapping(worker.get("overload"))
    transport = _mapping(worker.get("transport"))
    return {
        "worker": worker.get("index"),
        "pid": worker.get("pid"),
        "requests_in": worker.get("requests_in"),
        "forwarded": worker.get("forwarded_to_worker"),
        "transactions": worker.get("transactions"),
        "received": transport.get("received"),
        "sent": transport.get("sent"),
        "shedding": overload.get("shedding"),
        "lag_ms": overload.get("lag_ms"),
    }
