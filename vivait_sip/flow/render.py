"""Text renderings of mdflow config and statistics for the CLI, Zabbix and Prometheus.

``show stats`` is one line per flow of ``key=value`` pairs in a fixed order so that
Zabbix items can match ``^flow=NAME `` and pick a key with a regex; keys are only
ever appended, never renamed or reordered.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from vivait_sip.flow.config import MdflowConfig
from vivait_sip.flow.engine import OUTCOMES, MdflowSnapshot

_SAFE_DNIS = re.compile(r"^[A-Za-z0-9+*#._-]+$")


def _num(value: float) -> str:
    """Config numbers as written by people: 2 not 2.0, 0.5 stays 0.5."""
    return f"{value:g}"


def _dnis(dnis: str) -> str:
    """DNIS in a stats line: kept as is when safe, else percent-encoded (no spaces/commas)."""
    return dnis if _SAFE_DNIS.match(dnis) else quote(dnis, safe="")


def render_config(config: MdflowConfig) -> str:
    """``mdflow show config``: the general line, then one line per flow."""
    lines = [f"tick_ms={config.tick_ms} estad_interv_seg={config.estad_interv_seg}"]
    for f in config.flows:
        lines.append(
            f"flow={f.flujo} en_paso={int(f.en_paso)} tasa_sal_seg={_num(f.tasa_sal_seg)}"
            f" dnis_max={f.dnis_max} dnis_umbral_masivo={f.dnis_umbral_masivo}"
            f" to_desborda_seg={_num(f.to_desborda_seg)}"
        )
    return "\n".join(lines) + "\n"


def render_stats(snapshot: MdflowSnapshot) -> str:
    """``mdflow show stats``: one line per flow, fixed key order (see docs/mdflow.md)."""
    lines = []
    for s in snapshot.flows:
        massive = ",".join(_dnis(d) for d in s.massive_dnis) or "-"
        lines.append(
            f"flow={s.flow} mode={'paso' if s.en_paso else 'control'}"
            f" interval_s={_num(snapshot.interval_s)} complete={int(snapshot.complete)}"
            f" in_rate={s.in_rate:.2f} admitted_rate={s.admitted_rate:.2f}"
            f" queued={s.queued} oldest_wait_s={s.oldest_wait_s:.2f}"
            f" max_wait_s={s.max_wait_s:.2f} dnis_queues={s.dnis_queues}"
            f" massive={len(s.massive_dnis)} massive_dnis={massive}"
            f" offered={s.offered} ok={s.ok} agujero={s.agujero}"
            f" desborda={s.desborda} abandoned={s.abandoned}"
        )
    return "".join(line + "\n" for line in lines)


_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("in_rate", "in_rate", "Incoming calls per second over the last statistics interval."),
    (
        "admitted_rate",
        "admitted_rate",
        "Admitted calls per second over the last statistics interval.",
    ),
    ("queued_calls", "queued", "Calls waiting in the flow's DNIS queues now."),
    ("oldest_wait_seconds", "oldest_wait_s", "Wait so far of the oldest queued call."),
    (
        "max_wait_seconds",
        "max_wait_s",
        "Longest queue wait of a call that left during the last interval.",
    ),
    ("dnis_queues", "dnis_queues", "DNIS queues in use now."),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_prometheus(snapshot: MdflowSnapshot) -> str:
    """Prometheus text exposition (format 0.0.4) of the snapshot."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        out.append(f"# HELP vivait_mdflow_{name} {help_text}")
        out.append(f"# TYPE vivait_mdflow_{name} {kind}")

    family("pass_through", "gauge", "1 if the flow only measures (en_paso=1), 0 if it controls.")
    for s in snapshot.flows:
        out.append(f'vivait_mdflow_pass_through{{flow="{_label(s.flow)}"}} {int(s.en_paso)}')
    for name, attr, help_text in _GAUGES:
        family(name, "gauge", help_text)
        for s in snapshot.flows:
            value = float(getattr(s, attr))
            out.append(f'vivait_mdflow_{name}{{flow="{_label(s.flow)}"}} {value:.6g}')
    family("massive_dnis", "gauge", "DNIS that were massive during the last interval.")
    for s in snapshot.flows:
        out.append(f'vivait_mdflow_massive_dnis{{flow="{_label(s.flow)}"}} {len(s.massive_dnis)}')
    family("interval_calls", "gauge", "Calls per outcome during the last statistics interval.")
    for s in snapshot.flows:
        for outcome in ("offered", *OUTCOMES):
            out.append(
                f'vivait_mdflow_interval_calls{{flow="{_label(s.flow)}",outcome="{outcome}"}}'
                f" {getattr(s, outcome)}"
            )
    family("offered_total", "counter", "Calls offered to the flow since start.")
    for s in snapshot.flows:
        out.append(f'vivait_mdflow_offered_total{{flow="{_label(s.flow)}"}} {s.totals["offered"]}')
    family("calls_total", "counter", "Calls per outcome since start.")
    for s in snapshot.flows:
        for outcome in OUTCOMES:
            out.append(
                f'vivait_mdflow_calls_total{{flow="{_label(s.flow)}",outcome="{outcome}"}}'
                f" {s.totals[outcome]}"
            )
    return "\n".join(out) + "\n"
