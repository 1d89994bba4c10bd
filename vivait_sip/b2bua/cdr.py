"""Call detail records: one `CallRecord` per call, one `LegRecord` per leg, and the writer
that commits them to the store before the call is reported ended.

Why a synchronous commit per call: in WAL mode with `synchronous=NORMAL` a commit is in
the operating system when `write` returns, so a `kill -9` one instant later loses nothing
(only a power cut can lose the last commits).  A call with two legs costs a few tens of
microseconds (docs/b2bua.md has the figure), so batching would buy nothing and would
delay "reported ended".  The store keeps its own row types; this module converts.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, cast

from ..store import CdrCallRow, CdrLegRow, Store

Disposition = Literal["answered", "no_answer", "busy", "failed", "cancelled", "rejected", "congestion"]
HangupSide = Literal["caller", "callee", "system"]
DAY_S = 86_400.0

# Final SIP status → disposition for calls never answered nor cancelled by the caller;
# a status not listed is "failed" (404, 484, 488, 500, 604, ...).
_BY_STATUS: dict[int, Disposition] = {
    486: "busy",
    600: "busy",
    487: "cancelled",
    408: "no_answer",
    480: "no_answer",
    503: "congestion",
    401: "rejected",
    403: "rejected",
    407: "rejected",
    603: "rejected",
}
_EPOCH_RE = re.compile(r"-?\d+(\.\d+)?")


@dataclass(slots=True)
class LegRecord:
    """One SIP leg of a call: the inbound (UAS) leg or one outbound (UAC) attempt."""

    leg_id: str
    call_id: str  # the SIP Call-ID of this leg
    direction: Literal["in", "out"]
    peer: str  # the far end's URI
    target: str  # what was dialled on this leg: user, extension or number
    contact: str | None
    trunk: str | None
    started_at: float
    answered_at: float | None
    ended_at: float | None
    status: int | None  # final SIP status of this leg
    cause: str | None  # Reason header, or our own cause text


@dataclass(slots=True)
class CallRecord:
    """One call from the caller's INVITE to its end, with every leg it made."""

    call_uuid: str
    linked_to: str | None  # the call this one came from by transfer
    caller: str
    callee: str
    user: str | None  # the authenticated calling user
    callee_user: str | None
    did: str | None
    trunk: str | None
    rule: str | None
    flow: str | None
    flow_outcome: str | None  # ok, agujero, desborda, abandoned, error
    started_at: float
    answered_at: float | None
    ended_at: float
    duration_s: float
    billable_s: float
    disposition: Disposition
    hangup_cause: str
    hangup_side: HangupSide
    legs: list[LegRecord] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)  # media stats, recording path...

    def to_json(self) -> dict[str, object]:
        """Plain JSON values (times as epoch seconds), as the admin API returns them."""
        return dataclasses.asdict(self)


def disposition_for(status: int | None, cancelled: bool, answered: bool) -> Disposition:
    """The disposition of a call from its outcome: answered wins (a 200 that crossed a
    CANCEL is a call), then the caller's CANCEL, then the final status (`_BY_STATUS`);
    no final status at all is "failed"."""
    if answered or (status is not None and 200 <= status < 300):
        return "answered"
    if cancelled:
        return "cancelled"
    if status is None:
        return "failed"
    return _BY_STATUS.get(status, "failed")


def call_row(record: CallRecord) -> tuple[CdrCallRow, list[CdrLegRow]]:
    """The store's rows for a record; `extra` values JSON cannot hold are kept as text
    rather than losing the record."""
    row = CdrCallRow(
        record.call_uuid,
        record.linked_to,
        record.caller,
        record.callee,
        record.user,
        record.callee_user,
        record.did,
        record.trunk,
        record.rule,
        record.flow,
        record.flow_outcome,
        record.started_at,
        record.answered_at,
        record.ended_at,
        record.duration_s,
        record.billable_s,
        record.disposition,
        record.hangup_cause,
        record.hangup_side,
        json.dumps(record.extra, separators=(",", ":"), default=str),
    )
    legs = [
        CdrLegRow(
            leg.leg_id,
            leg.call_id,
            leg.direction,
            leg.peer,
            leg.target,
            leg.contact,
            leg.trunk,
            leg.started_at,
            leg.answered_at,
            leg.ended_at,
            leg.status,
            leg.cause,
        )
        for leg in record.legs
    ]
    return row, legs


def record_from_row(row: CdrCallRow, legs: list[CdrLegRow]) -> CallRecord:
    """The record back from the store's rows (their strings are the Literals written)."""
    return CallRecord(
        call_uuid=row.call_uuid,
        linked_to=row.linked_to,
        caller=row.caller,
        callee=row.callee,
        user=row.user,
        callee_user=row.callee_user,
        did=row.did,
        trunk=row.trunk,
        rule=row.rule,
        flow=row.flow,
        flow_outcome=row.flow_outcome,
        started_at=row.started_at,
        answered_at=row.answered_at,
        ended_at=row.ended_at,
        duration_s=row.duration_s,
        billable_s=row.billable_s,
        disposition=cast(Disposition, row.disposition),
        hangup_cause=row.hangup_cause,
        hangup_side=cast(HangupSide, row.hangup_side),
        legs=[
            LegRecord(
                leg_id=leg.leg_id,
                call_id=leg.call_id,
                direction=cast(Literal["in", "out"], leg.direction),
                peer=leg.peer,
                target=leg.target,
                contact=leg.contact,
                trunk=leg.trunk,
                started_at=leg.started_at,
                answered_at=leg.answered_at,
                ended_at=leg.ended_at,
                status=leg.status,
                cause=leg.cause,
            )
            for leg in legs
        ],
        extra=json.loads(row.extra),
    )


class CdrWriter:
    """Writes and reads CDRs through a store connection (the process's own: SQLite
    connections stay in the thread that opened them).

    `retention_days` > 0 (`b2bua.cdr_retention_days`) makes each write also remove a
    few calls that started longer ago than that, in the same transaction: deletion keeps
    pace with any call rate at a small, bounded cost per call, and never stalls the loop.
    """

    def __init__(
        self, store: Store, *, retention_days: float = 0.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.retention_days = retention_days  # set again on reload
        self.clock = clock

    def write(self, record: CallRecord) -> None:
        """Commit the record before returning; StoreError when it could not be (the
        caller logs it and still ends the call).  A call_uuid is written once."""
        row, legs = call_row(record)
        cutoff = self.clock() - self.retention_days * DAY_S if self.retention_days > 0 else None
        self.store.save_cdr(row, legs, prune_before=cutoff)

    def amend(self, call_uuid: str, extra: dict[str, object]) -> bool:
        """Add `extra` keys to a call already written (StoreError when it cannot be)."""
        return self.store.amend_cdr_extra(call_uuid, extra)

    def query(
        self,
        since: float,
        until: float,
        *,
        limit: int | None = None,
        user: str | None = None,
        after: tuple[float, str] | None = None,
    ) -> list[CallRecord]:
        """Calls started in [since, until), oldest first; `after` continues a page."""
        return [
            record_from_row(row, legs)
            for row, legs in self.store.query_cdrs(since, until, limit, user=user, after=after)
        ]


def parse_time(text: str) -> float:
    """Epoch seconds, or ISO 8601 (a date, a local time, or a time with an offset)."""
    value = text.strip()
    if _EPOCH_RE.fullmatch(value):
        return float(value)
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: give ISO 8601 (2026-03-01, 2026-03-01T08:30, "
            "2026-03-01T08:30:00+01:00) or epoch seconds"
        ) from None
