"""CDR records and the writer: round trips, dispositions, queries, retention, times."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path

import pytest
from cdr_samples import T0, sample_call

from vivait_sip.b2bua.cdr import (
    DAY_S,
    CallRecord,
    CdrWriter,
    LegRecord,
    disposition_for,
    parse_time,
)
from vivait_sip.store import CDR_PRUNE_PER_WRITE, Store, StoreError


@pytest.fixture
def writer(tmp_path: Path) -> CdrWriter:
    return CdrWriter(Store.open(tmp_path), clock=lambda: T0 + 3600)


def test_round_trip_with_legs_links_and_extra(writer: CdrWriter) -> None:
    first = sample_call("call-1")
    # A blind transfer: the caller's new call to 6141 points to the call it came from.
    transferred = sample_call(
        "call-2",
        T0 + 70,
        linked_to="call-1",
        callee="6141",
        callee_user="6141",
        trunk=None,
        rule=None,
        flow=None,
        flow_outcome=None,
        answered_at=None,
        duration_s=12.0,
        billable_s=0.0,
        ended_at=T0 + 82,
        disposition="no_answer",
        hangup_cause="ring timeout",
        hangup_side="system",
        legs=[
            LegRecord("l3", "c3@h", "out", "sip:6141@192.0.2.2", "6141", None, None, T0 + 70, None, None, None, None)
        ],
        extra={},
    )
    writer.write(first)
    writer.write(transferred)
    assert writer.query(T0, T0 + 3600) == [first, transferred]
    got = writer.query(T0 + 1, T0 + 3600)[0]
    assert got.linked_to == "call-1" and got.legs[0].direction == "out" and got.legs[0].status is None
    assert isinstance(got, CallRecord) and isinstance(got.legs[0], LegRecord)


def test_a_call_without_legs_and_odd_extra_values(writer: CdrWriter) -> None:
    """`extra` values JSON cannot hold are kept as text rather than losing the CDR."""
    writer.write(sample_call("bare", legs=[], extra={"path": Path("/var/rec/x.wav"), "n": 3}))
    (got,) = writer.query(T0, T0 + 1)
    assert got.legs == [] and got.extra == {"path": "/var/rec/x.wav", "n": 3}


def test_a_call_is_written_once(writer: CdrWriter) -> None:
    writer.write(sample_call("dup"))
    with pytest.raises(StoreError, match="call dup not saved"):
        writer.write(sample_call("dup", legs=[]))
    (got,) = writer.query(T0, T0 + 1)
    assert len(got.legs) == 2  # the first record, whole


def test_query_window_order_limit_pages_and_user(writer: CdrWriter) -> None:
    for i, uuid in enumerate(["c", "a", "b"]):  # a and b start at the same time: by uuid
        writer.write(sample_call(uuid, T0 + (0 if i == 0 else 10)))
    writer.write(sample_call("other-user", T0 + 20, user="6141", caller="6141"))
    writer.write(sample_call("too-late", T0 + 100))
    assert [c.call_uuid for c in writer.query(T0, T0 + 100)] == ["c", "a", "b", "other-user"]
    assert [c.call_uuid for c in writer.query(T0 + 10, T0 + 101)] == ["a", "b", "other-user", "too-late"]
    assert [c.call_uuid for c in writer.query(T0, T0 + 100, limit=2)] == ["c", "a"]
    assert [c.call_uuid for c in writer.query(T0, T0 + 100, after=(T0 + 10, "a"))] == ["b", "other-user"]
    assert [c.call_uuid for c in writer.query(T0, T0 + 101, user="6141")] == ["other-user"]
    assert writer.query(T0 + 1000, T0 + 2000) == []


def test_many_calls_in_one_query(writer: CdrWriter) -> None:
    """More calls than one IN (...) list holds: every leg still reaches its call."""
    for i in range(1203):
        writer.write(sample_call(f"c{i:05d}", T0 + i))
    got = writer.query(T0, T0 + 2000)
    assert len(got) == 1203 and all(len(c.legs) == 2 and c.legs[0].leg_id == f"{c.call_uuid}-in" for c in got)


def test_retention_prunes_old_calls_as_new_ones_are_written(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    now = T0 + 10 * DAY_S
    keep_all = CdrWriter(store, clock=lambda: now)
    for i in range(10):  # started 9 days ago, and one 1 hour ago
        keep_all.write(sample_call(f"old-{i}", T0 + DAY_S + i))
    keep_all.write(sample_call("recent", now - 3600))
    writer = CdrWriter(store, retention_days=7, clock=lambda: now)
    writer.write(sample_call("new-1", now))
    left = [c.call_uuid for c in writer.query(0, now + 1)]
    assert left[:1] == [f"old-{CDR_PRUNE_PER_WRITE}"] and len(left) == 11 - CDR_PRUNE_PER_WRITE + 1
    for i in range(2, 5):
        writer.write(sample_call(f"new-{i}", now))
    assert [c.call_uuid for c in writer.query(0, now + 1)] == ["recent", "new-1", "new-2", "new-3", "new-4"]
    assert store.conn.execute("SELECT COUNT(*) FROM cdr_legs").fetchone()[0] == 10  # no orphan legs
    writer.retention_days = 0  # reload: keep everything again
    writer.write(sample_call("new-5", now))
    assert len(writer.query(0, now + 1)) == 6


@pytest.mark.parametrize(
    ("status", "cancelled", "answered", "expected"),
    [
        (200, False, True, "answered"),
        (None, False, True, "answered"),
        (200, True, True, "answered"),  # a 200 that crossed the caller's CANCEL is a call
        (200, False, False, "answered"),
        (487, True, False, "cancelled"),
        (None, True, False, "cancelled"),
        (487, False, False, "cancelled"),
        (486, False, False, "busy"),
        (600, False, False, "busy"),
        (408, False, False, "no_answer"),
        (480, False, False, "no_answer"),
        (503, False, False, "congestion"),
        (401, False, False, "rejected"),
        (403, False, False, "rejected"),
        (407, False, False, "rejected"),
        (603, False, False, "rejected"),
        (404, False, False, "failed"),
        (484, False, False, "failed"),
        (488, False, False, "failed"),
        (500, False, False, "failed"),
        (502, False, False, "failed"),
        (604, False, False, "failed"),
        (None, False, False, "failed"),
    ],
)
def test_disposition_for(status: int | None, cancelled: bool, answered: bool, expected: str) -> None:
    assert disposition_for(status, cancelled, answered) == expected


def test_parse_time() -> None:
    assert parse_time("1772352000") == T0
    assert parse_time(" 1772352000.25 ") == T0 + 0.25
    assert parse_time("2026-03-01T08:00:00Z") == T0
    assert parse_time("2026-03-01T09:00:00+01:00") == T0
    local = datetime(2026, 3, 1, 8, 30)  # no offset: local time
    assert parse_time("2026-03-01T08:30") == local.timestamp()
    assert parse_time("2026-03-01") == datetime(2026, 3, 1).timestamp()
    assert parse_time("2026-03-01 08:00:00.5+00:00") == T0 + 0.5
    for bad in ("yesterday", "", "1e9", "2026-13-01", "nan"):
        with pytest.raises(ValueError, match="is not a time: give ISO 8601"):
            parse_time(bad)


def test_to_json_is_plain_values() -> None:
    record = sample_call()
    data = record.to_json()
    assert data["legs"][0]["call_id"] == "in-call-1@192.0.2.1"  # type: ignore[index]
    assert CallRecord(**{**data, "legs": [LegRecord(**leg) for leg in data["legs"]]}) == record  # type: ignore[arg-type,attr-defined]
    assert dataclasses.is_dataclass(record) and not hasattr(record, "__dict__")  # slots
