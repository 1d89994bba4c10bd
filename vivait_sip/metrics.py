"""Prometheus text exposition (format 0.0.4): the helpers every feature's `metrics()` uses,
and the core families built from `Application.status_all()`.

Naming follows the Prometheus conventions (checked by `promtool check metrics` in
tests/server/test_observability.py): one `# HELP` and `# TYPE` per family, base units in the
name (`_seconds`, `_bytes`), `_total` on counters and only on counters, `_info` gauges of
value 1 for text facts (version, compiled-module state, listeners).  A figure that differs
between worker processes carries a `worker` label; the families without one are totals
over every worker.

Everything here works on the status dictionary alone (no application object), so a
feature may import it (tests/test_dependencies.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def escape_label(value: object) -> str:
    """A label value as the text format wants it: backslash, quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def labels(pairs: Mapping[str, object]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{key}="{escape_label(value)}"' for key, value in pairs.items()) + "}"


def number(value: object) -> str:
    """A sample value: ints as ints, floats compactly, bools as 0/1, anything else NaN."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.10g}"
    try:
        return f"{float(str(value)):.10g}"
    except ValueError:
        return "NaN"


def family(
    name: str,
    kind: str,
    help_text: str,
    samples: Iterable[tuple[Mapping[str, object], object]],
) -> list[str]:
    """One metric family: HELP, TYPE and its samples as (labels, value) pairs."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{labels(pairs)} {number(value)}" for pairs, value in samples]
    return lines


def single(name: str, kind: str, help_text: str, value: object) -> list[str]:
    """A family with one unlabelled sample."""
    return family(name, kind, help_text, [({}, value)])


def _dict(value: object) -> dict[str, object]:
    return dict(value) if isinstance(value, dict) else {}


def _int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def worker_rows(status: Mapping[str, object]) -> list[dict[str, object]]:
    """One row per worker process: `status["workers"]` with several, else this process."""
    rows = status.get("workers")
    if isinstance(rows, list) and rows:
        return [dict(row) for row in rows if isinstance(row, dict)]
    counters = _dict(status.get("counters"))
    return [
        {
            "index": 0,
            "pid": status.get("pid", 0),
            "requests_in": counters.get("requests_in", 0),
            "forwarded_to_worker": counters.get("forwarded_to_worker", 0),
            "transactions": status.get("transactions", 0),
            "overload": status.get("overload", {}),
            "transport": status.get("transport", {}),
        }
    ]


def core_metrics(status: Mapping[str, object]) -> list[str]:
    """The server's own families (features add theirs through `Feature.metrics`)."""
    counters = _dict(status.get("counters"))
    transport = _dict(status.get("transport"))
    rows = worker_rows(status)
    out: list[str] = []
    out += family(
        "vivait_build_info",
        "gauge",
        "Version of the running server (value 1).",
        [({"version": status.get("version", "")}, 1)],
    )
    out += family(
        "vivait_native_info",
        "gauge",
        "Whether the compiled hot modules run: compiled, pure, stale or forced-pure (value 1).",
        [({"state": status.get("native", "pure")}, 1)],
    )
    out += family(
        "vivait_listener_info",
        "gauge",
        "One series per listening socket: kind (sip, http, admin), transport and address (value 1).",
        [(_listener_labels(str(item)), 1) for item in _list(status.get("listeners"))],
    )
    out += single("vivait_uptime_seconds", "gauge", "Seconds since the server started.", status.get("uptime_s", 0))
    out += single("vivait_sip_transactions", "gauge", "Live SIP transactions, all workers.", status.get("transactions", 0))
    out += single(
        "vivait_sip_transactions_completed_waiting",
        "gauge",
        "Completed transactions kept to absorb retransmissions, all workers.",
        status.get("transactions_completed_waiting", 0),
    )
    if "dialogs" in status:
        out += single("vivait_sip_dialogs", "gauge", "Live SIP dialogs.", status.get("dialogs", 0))
    out += single("vivait_connections", "gauge", "Open TCP/TLS/WebSocket connections (held by worker 0).", status.get("connections", 0))
    out += family(
        "vivait_sip_events_total",
        "counter",
        "SIP core counters by event, all workers (docs/admin.md, Counters).",
        [({"event": name}, value) for name, value in sorted(counters.items())],
    )
    out += family(
        "vivait_transport_messages_total",
        "counter",
        "SIP messages received and sent by the transports, all workers.",
        [({"direction": "in"}, transport.get("received", 0)), ({"direction": "out"}, transport.get("sent", 0))],
    )
    out += single(
        "vivait_transport_connections_refused_total",
        "counter",
        "Connections refused by the per-IP or global connection limit.",
        transport.get("connections_refused", 0),
    )
    out += single(
        "vivait_transport_send_errors_total",
        "counter",
        "Messages the transports failed to send (connect failures, closed connections).",
        transport.get("send_errors", 0),
    )
    others = {k: v for k, v in transport.items() if k not in _TRANSPORT_KEYS and isinstance(v, (int, float))}
    if others:
        out += family(
            "vivait_transport_events_total",
            "counter",
            "Other transport counters (accept refusals, handshake and header timeouts...), all workers.",
            [({"event": name}, value) for name, value in sorted(others.items())],
        )
    out += family(
        "vivait_transport_connections_total",
        "counter",
        "TCP/TLS/WebSocket connections accepted or opened since start, by transport.",
        [({"transport": name.removeprefix("connections_")}, value) for name, value in sorted(counters.items()) if name.startswith("connections_")],
    )
    out += single(
        "vivait_worker_link_drops_total",
        "counter",
        "Messages dropped because a worker link was full or gone (should stay 0).",
        status.get("worker_link_drops", 0),
    )
    out += family(
        "vivait_worker_info",
        "gauge",
        "One series per worker process, with its pid (value 1).",
        [({"worker": row.get("index", 0), "pid": row.get("pid", 0)}, 1) for row in rows],
    )
    out += family(
        "vivait_worker_requests_total",
        "counter",
        "SIP requests processed by each worker.",
        [({"worker": row.get("index", 0)}, row.get("requests_in", 0)) for row in rows],
    )
    out += family(
        "vivait_worker_forwarded_total",
        "counter",
        "Messages a worker read and handed to the worker owning them.",
        [({"worker": row.get("index", 0)}, row.get("forwarded_to_worker", 0)) for row in rows],
    )
    out += family(
        "vivait_worker_transactions",
        "gauge",
        "Live SIP transactions of each worker.",
        [({"worker": row.get("index", 0)}, row.get("transactions", 0)) for row in rows],
    )
    out += family(
        "vivait_overload_shedding",
        "gauge",
        "1 while a worker answers new requests 503 because its event loop lags.",
        [({"worker": row.get("index", 0)}, bool(_dict(row.get("overload")).get("shedding"))) for row in rows],
    )
    out += family(
        "vivait_event_loop_lag_seconds",
        "gauge",
        "Last measured event-loop lag of each worker.",
        [({"worker": row.get("index", 0)}, float(str(_dict(row.get("overload")).get("lag_ms", 0))) / 1000) for row in rows],
    )
    out += family(
        "vivait_overload_episodes_total",
        "counter",
        "Times a worker started shedding load.",
        [({"worker": row.get("index", 0)}, _int(_dict(row.get("overload")).get("episodes", 0))) for row in rows],
    )
    gc = _dict(status.get("gc"))
    out += family(
        "vivait_gc_collections_total", "counter", "Garbage collections of worker 0, by kind (vivait_sip/gcpolicy.py).",
        [({"kind": "all"}, _int(gc.get("collections", 0))), ({"kind": "full"}, _int(gc.get("full", 0)))],
    )
    out += family(
        "vivait_gc_max_pause_seconds", "gauge", "Longest garbage-collection pause of worker 0 since start.",
        [({}, float(str(gc.get("max_pause_ms", 0))) / 1000)],
    )
    out += family(
        "vivait_malloc_trims_total", "counter", "Times worker 0 returned freed heap to the OS after a busy period.",
        [({}, _int(gc.get("trims", 0)))],
    )
    return out


_TRANSPORT_KEYS = frozenset(("received", "sent", "connections_refused", "send_errors"))


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def _listener_labels(text: str) -> dict[str, object]:
    """`sip udp 127.0.0.1:5060` → kind, transport, address."""
    parts = text.split(" ", 2)
    if len(parts) != 3:
        return {"kind": "", "transport": "", "address": text}
    return {"kind": parts[0], "transport": parts[1], "address": parts[2]}


def render(families: Iterable[list[str]]) -> str:
    return "".join("\n".join(lines) + "\n" for lines in families if lines)
