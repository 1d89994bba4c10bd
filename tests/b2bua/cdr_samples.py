"""Sample CDRs for the CDR tests: a full call (two legs, every field set) and variants."""

from __future__ import annotations

import dataclasses
from typing import Any

from vivait_sip.b2bua.cdr import CallRecord, LegRecord

T0 = 1_772_352_000.0  # 2026-03-01T08:00:00Z


def sample_call(uuid: str = "call-1", started_at: float = T0, **changes: Any) -> CallRecord:
    """An answered outside call from user 6140 on trunk pri, 62.5 s, 60 s billable."""
    record = CallRecord(
        call_uuid=uuid,
        linked_to=None,
        caller="6140",
        callee="0034913346140",
        user="6140",
        callee_user=None,
        did=None,
        trunk="pri",
        rule="outside",
        flow="ventas",
        flow_outcome="ok",
        started_at=started_at,
        answered_at=started_at + 2.5,
        ended_at=started_at + 62.5,
        duration_s=62.5,
        billable_s=60.0,
        disposition="answered",
        hangup_cause="normal clearing",
        hangup_side="caller",
        legs=[
            LegRecord(
                leg_id=f"{uuid}-in",
                call_id=f"in-{uuid}@192.0.2.1",
                direction="in",
                peer="sip:6140@192.0.2.1:5060",
                target="00913346140",
                contact="sip:6140@192.0.2.1:5060;transport=udp",
                trunk=None,
                started_at=started_at,
                answered_at=started_at + 2.5,
                ended_at=started_at + 62.5,
                status=200,
                cause=None,
            ),
            LegRecord(
                leg_id=f"{uuid}-out",
                call_id=f"out-{uuid}@10.0.0.5",
                direction="out",
                peer="sip:0034913346140@10.0.0.5",
                target="0034913346140",
                contact=None,
                trunk="pri",
                started_at=started_at + 0.01,
                answered_at=started_at + 2.5,
                ended_at=started_at + 62.5,
                status=200,
                cause='Q.850;cause=16;text="Normal call clearing"',
            ),
        ],
        extra={"recording": "/var/rec/call-1.wav", "rtp": {"lost": 0, "jitter_ms": 1.5}},
    )
    return dataclasses.replace(record, **changes)
