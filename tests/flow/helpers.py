"""Shared builders for the mdflow tests (no file under /work/shared is read)."""

from __future__ import annotations

from typing import Any

from vivait_sip.flow.config import FlowConfig, MdflowConfig


def flow(name: str = "F", **overrides: Any) -> FlowConfig:
    """A control-mode flow with small, easy-to-reason-about limits."""
    values: dict[str, Any] = {
        "flujo": name,
        "en_paso": 0,
        "tasa_sal_seg": 2,
        "dnis_max": 2,
        "dnis_umbral_masivo": 3,
        "to_desborda_seg": 5,
    }
    values.update(overrides)
    return FlowConfig.model_validate(values)


def config(*flows: FlowConfig, tick_ms: int = 100, interval: int = 10) -> MdflowConfig:
    return MdflowConfig(tick_ms=tick_ms, estad_interv_seg=interval, flows=list(flows))
