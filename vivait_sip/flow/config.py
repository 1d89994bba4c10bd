"""Validated mdflow configuration, stored under the ``mdflow`` key of the JSON config.

Field names are the deck's (``MDflow.conf``) so operators can map one onto the other
without a translation table.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

#: Flow names appear unquoted in ``show stats`` lines and as Prometheus label values,
#: so they are restricted to characters that need no escaping in either.
FLOW_NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"


class FlowConfig(BaseModel):
    """One ``[flujo_N]`` section: limits for the calls entering through one flow."""

    model_config = ConfigDict(extra="forbid")

    flujo: str = Field(pattern=FLOW_NAME_PATTERN, description="flow name")
    en_paso: bool = Field(
        default=False, description="1/true: measure only, always admit; 0/false: flow control"
    )
    tasa_sal_seg: float = Field(gt=0, allow_inf_nan=False, description="max output calls/s")
    dnis_max: int = Field(ge=1, description="max number of per-DNIS queues")
    dnis_umbral_masivo: int = Field(
        ge=1, description="a DNIS with at least this many queued calls is massive (stats only)"
    )
    to_desborda_seg: float = Field(
        gt=0, allow_inf_nan=False, description="max seconds a call waits before 'desborda'"
    )

    @field_validator("en_paso", mode="before")
    @classmethod
    def _zero_or_one(cls, value: Any) -> Any:
        """Accept only the deck's 0/1 (or a JSON boolean), never "yes" or 2."""
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError("must be 0 or 1 (or true/false)")


class MdflowConfig(BaseModel):
    """The general section plus the list of flows."""

    model_config = ConfigDict(extra="forbid")

    tick_ms: int = Field(
        default=100, gt=0, le=1000, description="tick length; releases and timeouts run per tick"
    )
    estad_interv_seg: int = Field(default=10, gt=0, description="statistics interval in seconds")
    flows: list[FlowConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> MdflowConfig:
        """Flows are addressed by name (offers, stats, reload), so names must be unique;
        every repeated name is reported on its own entry (`flows[2].flujo`)."""
        first: dict[str, int] = {}
        errors: list[InitErrorDetails] = []
        for index, flow in enumerate(self.flows):
            if flow.flujo in first:
                message = f"duplicate flow name {flow.flujo!r} (first defined at flows[{first[flow.flujo]}])"
                errors.append(
                    InitErrorDetails(
                        type=PydanticCustomError("mdflow", message), loc=("flows", index, "flujo"), input=flow.flujo
                    )
                )
            else:
                first[flow.flujo] = index
        if errors:
            raise ValidationError.from_exception_data("MdflowConfig", errors)
        return self
