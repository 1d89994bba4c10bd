"""A feature for the tests only, loaded with VIVAIT_SIP_FEATURES=probe_feature:ProbeFeature:
its `check_config` looks across sections (the mdflow flows it names must exist), like the
B2BUA's dialplan does."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from vivait_sip.contract import Feature


class ProbeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flows: list[str] = Field(default_factory=list)


class ProbeFeature(Feature[ProbeConfig]):
    name = "probe"
    config_key = "probe"
    config_model = ProbeConfig
    order = 90

    @classmethod
    def check_config(cls, config: Any) -> list[str]:
        names = {flow.flujo for flow in config.mdflow.flows}
        return [f"probe.flows[{i}]: no mdflow flow {name!r}" for i, name in enumerate(config.probe.flows) if name not in names]
