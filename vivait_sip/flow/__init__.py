"""mdflow: per-flow call-rate measurement and admission control.

The engine (:mod:`.engine`) is pure and clock-injected so it can be tested and
benchmarked without sleeping; :mod:`.service` runs it inside asyncio for the
B2BUA and the admin API (:mod:`.admin`).
"""

from vivait_sip.flow.config import FlowConfig, MdflowConfig
from vivait_sip.flow.engine import (
    ABANDONED,
    AGUJERO,
    DESBORDA,
    OK,
    Admission,
    FlowStats,
    MdflowEngine,
    MdflowSnapshot,
    QueuedCall,
    UnknownFlowError,
)

__all__ = [
    "ABANDONED",
    "AGUJERO",
    "DESBORDA",
    "OK",
    "Admission",
    "FlowConfig",
    "FlowStats",
    "MdflowConfig",
    "MdflowEngine",
    "MdflowSnapshot",
    "QueuedCall",
    "UnknownFlowError",
]
