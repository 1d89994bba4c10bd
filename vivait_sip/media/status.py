"""Media workers' status as `ctl media` prints it and as /metrics exposes it.

Input: `MediaClient.status()`, one dict per media worker (relay.Relay.status plus the
worker's own fields: index, pid, recordings, send_errors, unusable_ports, commands,
cpu_s), or `{"index", "error"}` for a worker that did not answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

COLUMNS = (
    ("worker", "index"),
    ("pid", "pid"),
    ("sessions", "sessions"),
    ("ports", None),
    ("packets in", "packets_in"),
    ("packets out", "packets_out"),
    ("lost", "lost"),
    ("loss %", "loss_pct"),
    ("players", "players"),
    ("recordings", "recordings"),
    ("timeouts", "rtp_timeouts"),
    ("cpu s", "cpu_s"),
)


def _cell(status: dict[str, Any], key: str | None) -> str:
    if key is None:
        return f"{status.get('ports_in_use', 0)}/{status.get('ports_total', 0)} ({status.get('port_min')}-{status.get('port_max')})"
    value = status.get(key, "")
    return str(value)


def render_media_status(statuses: Sequence[dict[str, Any]]) -> str:
    """A table, one line per media worker, then the totals."""
    if not statuses:
        return "media: no built-in media workers"
    rows = [[title for title, _ in COLUMNS]]
    for status in statuses:
        if "error" in status:
            rows.append([str(status.get("index", "?")), "-", f"not answering: {status['error']}"] + [""] * (len(COLUMNS) - 3))
            continue
        rows.append([_cell(status, key) for _, key in COLUMNS])
    ok = [s for s in statuses if "error" not in s]
    lost = sum(int(s.get("lost", 0)) for s in ok)
    received = sum(int(s.get("packets_in", 0)) for s in ok)
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.append(
        f"total: {sum(int(s.get('sessions', 0)) for s in ok)} sessions, "
        f"{sum(int(s.get('ports_in_use', 0)) for s in ok)}/{sum(int(s.get('ports_total', 0)) for s in ok)} ports, "
        f"{received} packets in, {lost} lost ({100.0 * lost / (lost + received) if lost + received else 0.0:.3f} %), "
        f"{len(ok)}/{len(statuses)} workers answering"
    )
    return "\n".join(lines)


_METRICS = (
    ("vivait_media_sessions", "gauge", "sessions", "Media sessions in this media worker."),
    ("vivait_media_ports_in_use", "gauge", "ports_in_use", "RTP and RTCP ports held."),
    ("vivait_media_ports", "gauge", "ports_total", "RTP and RTCP ports of this worker's slice."),
    ("vivait_media_packets_in_total", "counter", "packets_in", "Datagrams received on media ports."),
    ("vivait_media_packets_out_total", "counter", "packets_out", "Datagrams sent (relayed and generated)."),
    ("vivait_media_lost_total", "counter", "lost", "RTP packets lost on the way to us (RFC 3550 A.1), closed sessions included."),
    ("vivait_media_players", "gauge", "players", "Prompts, music on hold and DTMF being sent."),
    ("vivait_media_recordings", "gauge", "recordings", "Recordings being written."),
    ("vivait_media_rtp_timeouts_total", "counter", "rtp_timeouts", "Calls ended by the RTP timeout."),
    ("vivait_media_cpu_seconds_total", "counter", "cpu_s", "CPU time of the media worker process."),
)


def media_metrics(statuses: Sequence[dict[str, Any]]) -> list[str]:
    """Prometheus text lines, one series per media worker (label `worker`)."""
    lines: list[str] = []
    ok = [s for s in statuses if "error" not in s]
    for name, kind, key, help_text in _METRICS:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for status in ok:
            lines.append(f'{name}{{worker="{int(status.get("index", 0))}"}} {status.get(key, 0)}')
    lines.append("# HELP vivait_media_workers_up Media workers answering their status query.")
    lines.append("# TYPE vivait_media_workers_up gauge")
    lines.append(f"vivait_media_workers_up {len(ok)}")
    return lines
