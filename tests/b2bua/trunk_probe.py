"""A test feature that owns a `TrunkManager` (vivait_sip/b2bua/trunks.py) in a real
server: its own config section `trunkprobe.trunks` (the `b2bua.trunks` entries), its
OPTIONS and REGISTERs sent through `Host.sip` as this feature, its state in `ctl status`
(`trunkprobe.trunks`) and in /metrics.  It exists to prove the trunk code against real
peers (tests/b2bua/test_sipp_trunks.py) independently of the B2BUA feature, under a key
of its own so that both may be loaded.

Loaded with VIVAIT_SIP_FEATURES=trunk_probe:TrunkProbe and tests/b2bua on PYTHONPATH.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from vivait_sip.b2bua.config import TrunkConfig
from vivait_sip.b2bua.trunks import TrunkManager
from vivait_sip.contract import Feature
from vivait_sip.sip.ua import UaEvent


class ProbeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trunks: list[TrunkConfig] = Field(default_factory=list)


class TrunkProbe(Feature[ProbeConfig]):
    name = "trunkprobe"
    config_key = "trunkprobe"
    config_model = ProbeConfig

    def __init__(self, host: Any) -> None:
        super().__init__(host)
        self.trunks = TrunkManager(list(self.settings.trunks), host, self.name)

    async def start(self) -> None:
        await self.trunks.start()

    async def start_worker(self) -> None:
        await self.trunks.start()

    def reload(self, config: Any) -> None:
        self.trunks.reload(list(self.settings_of(config).trunks))

    def on_ua_event(self, event: UaEvent) -> None:
        self.trunks.on_ua_event(event)

    def status(self) -> dict[str, object]:
        return {"trunkprobe": {"trunks": self.trunks.status()}}

    def metrics(self, status: dict[str, object]) -> list[str]:
        return self.trunks.metrics()

    async def stop(self) -> None:
        await self.trunks.stop()
