"""Call slots shared by the SIP workers (b2bua/slots.py): a trunk's max_calls is the node's."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vivait_sip.b2bua.slots import KEYS, LocalSlots, SharedSlots


def test_local_slots_count_up_to_the_limit_and_never_below_zero() -> None:
    slots = LocalSlots()
    assert [slots.take("pri", 2) for _ in range(3)] == [True, True, False]
    assert slots.total("pri") == 2
    slots.give_back("pri")
    slots.give_back("pri")
    slots.give_back("pri")
    assert slots.total("pri") == 0 and slots.take("pri", 2)
    assert all(slots.take("carrier", 0) for _ in range(100))  # 0: no limit


def test_two_workers_share_one_limit(tmp_path: Path) -> None:
    path = tmp_path / "trunk-calls.slots"
    zero = SharedSlots.create(path, workers=2)
    one = SharedSlots(path, 1)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert zero.take("pri", 3) and zero.take("pri", 3) and one.take("pri", 3)
        assert not one.take("pri", 3) and not zero.take("pri", 3)  # 3 in the node, whoever holds them
        assert zero.total("pri") == one.total("pri") == 3 and one.total("other") == 0
        one.give_back("pri")
        assert zero.take("pri", 3) and not one.take("pri", 3)
        one.give_back("pri")  # one holds none now: nothing to give back
        assert zero.total("pri") == 3
        zero.forget_worker(1)  # lost with its calls: already none
        assert zero.total("pri") == 3
        zero.give_back("pri")
        assert one.take("pri", 3)
        zero.forget_worker(1)
        assert zero.total("pri") == 2
        again = SharedSlots(path, 0)  # a worker (re)starting has no calls
        try:
            assert one.total("pri") == 0
        finally:
            again.close()
    finally:
        zero.close()
        one.close()


def test_keys_have_their_own_columns_up_to_the_table_size(tmp_path: Path) -> None:
    slots = SharedSlots.create(tmp_path / "s.slots", workers=1)
    try:
        for n in range(KEYS):
            assert slots.take(f"trunk-{n}", 1)
        assert all(slots.total(f"trunk-{n}") == 1 for n in range(KEYS))
        assert slots.take("one-too-many", 1) and slots.take("one-too-many", 1)  # no column: not limited
        with pytest.raises(ValueError, match="1-64 bytes"):
            slots.take("x" * 65, 1)
    finally:
        slots.close()


def test_a_file_that_is_not_ours_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.slots"
    path.write_bytes(b"garbage" * 100)
    with pytest.raises(ValueError, match="not a slots file"):
        SharedSlots(path, 0)
    SharedSlots.create(path, workers=2).close()
    with pytest.raises(ValueError, match="worker 2 of 2"):
        SharedSlots(path, 2)


WORKER = """
import sys
from pathlib import Path
from vivait_sip.b2bua.slots import SharedSlots
slots = SharedSlots(Path(sys.argv[1]), int(sys.argv[2]))
sys.stdin.readline()  # both open, then race
print(sum(slots.take("pri", 500) for _ in range(2000)))
"""


def test_processes_racing_for_the_last_slots_take_exactly_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "s.slots"
    SharedSlots.create(path, workers=3).close()
    racers = [subprocess.Popen([sys.executable, "-c", WORKER, str(path), str(i)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True) for i in (1, 2)]
    try:
        for racer in racers:
            assert racer.stdin is not None
            racer.stdin.write("go\n")
            racer.stdin.flush()
        taken = [int(racer.communicate(timeout=60)[0]) for racer in racers]
    finally:
        for racer in racers:
            racer.kill()
    assert sum(taken) == 500, taken
    watcher = SharedSlots(path, 0)
    try:
        assert watcher.total("pri") == 500
    finally:
        watcher.close()
