"""The features this server loads, like Kamailio's `loadmodule` lines: one
`module:Class` per `contract.Feature`.  Adding a feature is adding a line here; nothing
else in the application names it."""

from __future__ import annotations

import os
from functools import cache
from importlib import import_module
from typing import Any

from .contract import Feature

FEATURES = (
    "vivait_sip.trace.feature:TraceFeature",
    "vivait_sip.registrar.feature:RegistrarFeature",
    "vivait_sip.flow.feature:MdflowFeature",
    "vivait_sip.media.feature:MediaFeature",
    "vivait_sip.b2bua.feature:B2buaFeature",
    "vivait_sip.webrtc.feature:WebrtcFeature",
)
# Out-of-tree features (a site's own, or a test's): comma-separated `module:Class`,
# loaded after the built-in ones (so they may take over a method's handler).
EXTRA_ENV = "VIVAIT_SIP_FEATURES"


@cache
def feature_classes() -> tuple[type[Feature[Any]], ...]:
    """Every feature class, in start order (`Feature.order`, then as listed)."""
    classes: list[type[Feature[Any]]] = []
    extra = [item.strip() for item in os.environ.get(EXTRA_ENV, "").split(",") if item.strip()]
    for spec in (*FEATURES, *extra):
        module, _, name = spec.partition(":")
        cls = getattr(import_module(module), name)
        if not (isinstance(cls, type) and issubclass(cls, Feature)):
            raise TypeError(f"{spec} is not a contract.Feature")
        classes.append(cls)
    return tuple(sorted(classes, key=lambda c: c.order))
