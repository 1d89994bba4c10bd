"""The garbage-collection policy (vivait_sip/gcpolicy.py): full collections only when
quiet (or after max_interval_s), malloc_trim only after a busy period."""

from __future__ import annotations

import gc

from vivait_sip import gcpolicy
from vivait_sip.gcpolicy import GcKeeper


class Fake:
    def __init__(self) -> None:
        self.now = 0.0
        self.load = 0
        self.trims = 0

    def trim(self) -> None:
        self.trims += 1


def keeper(fake: Fake) -> GcKeeper:
    return GcKeeper(lambda: fake.load, quiet_below=100, min_interval_s=30, max_interval_s=900,
                    clock=lambda: fake.now, trim=fake.trim)


def test_full_collections_wait_for_a_quiet_moment_and_trim_after_load() -> None:
    fake = Fake()
    k = keeper(fake)
    fake.now = 10
    assert not k.tick()  # quiet, but the last full collection (start) is too recent
    fake.now = 40
    assert k.tick() and fake.trims == 0  # quiet all along: nothing to hand back
    fake.load = 50_000
    for t in range(45, 900, 5):
        fake.now = t
        assert not k.tick()  # a flood: no full collection (it would walk every transaction)
    fake.load = 10
    fake.now = 905
    assert k.tick() and fake.trims == 1  # quiet again: collect, then hand memory back
    fake.now = 910
    assert not k.tick()


def test_sustained_load_still_gets_a_full_collection_every_max_interval() -> None:
    fake = Fake()
    k = keeper(fake)
    fake.load = 50_000
    fake.now = 899
    assert not k.tick()
    fake.now = 900
    assert k.tick() and fake.trims == 0  # still busy: no trim yet
    fake.now = 1000
    fake.load = 0
    assert k.tick() and fake.trims == 1


def test_tune_gc_leaves_generation_two_to_the_keeper() -> None:
    before = gc.get_threshold()
    try:
        gcpolicy.tune_gc()
        assert gc.get_threshold() == (gcpolicy.YOUNG, gcpolicy.MIDDLE, gcpolicy.OLD)
        assert gcpolicy._on_gc in gc.callbacks
        runs = gcpolicy.stats["collections"]
        gc.collect(0)
        assert gcpolicy.stats["collections"] == runs + 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
        if gcpolicy._on_gc in gc.callbacks:
            gc.callbacks.remove(gcpolicy._on_gc)
