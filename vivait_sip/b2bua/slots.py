"""Call slots shared by the SIP workers: `max_calls` (a trunk's, the node's) is the node's,
not each worker's.

A PRI gateway has 30 channels.  Split 15 and 15 between two workers, the 16th call that
hashes to the busier worker was refused while the trunk had room; with 30 calls up the
split is uneven more often than not.  So the counts live where every worker sees them:

* `LocalSlots`: one process, a dict.
* `SharedSlots`: a small file mapped by every worker (`mmap`).  A header names the keys
  (trunk names and the node's, one column each, added on first use); below it one row of 64-bit counts
  per worker.  A worker writes only its own row.  `take` holds an exclusive `flock` while
  it sums the key's column and adds one to its own cell, so the last slot goes to one
  worker only; the lock is held for microseconds and only by call set-up and tear-down.
  Worker 0 creates the file (zeroed: counts of an earlier run mean nothing) before the
  other workers exist, and zeroes the row of a worker that is lost (its calls went with
  it).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

MAGIC = b"VSLOTS01"
KEYS = 256  # columns: trunks per node
NAME_BYTES = 64  # a trunk name's UTF-8, NUL-padded (config names are shorter)
_HEADER = struct.Struct("<8sII")  # magic, workers, keys
_NAMES_AT = _HEADER.size
_COUNTS_AT = _NAMES_AT + KEYS * NAME_BYTES


class Slots(Protocol):
    def take(self, key: str, limit: int) -> bool:
        """Count one more under `key` unless `limit` (0: none) is reached already."""
        ...

    def give_back(self, key: str) -> None:
        """One fewer under `key` (never below zero)."""
        ...

    def total(self, key: str) -> int:
        """The node's count under `key`, every worker's summed."""
        ...


class LocalSlots:
    """`Slots` of a single process."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def take(self, key: str, limit: int) -> bool:
        count = self._counts.get(key, 0)
        if limit and count >= limit:
            return False
        self._counts[key] = count + 1
        return True

    def give_back(self, key: str) -> None:
        count = self._counts.get(key, 0)
        if count > 1:
            self._counts[key] = count - 1
        else:
            self._counts.pop(key, None)

    def total(self, key: str) -> int:
        return self._counts.get(key, 0)


def _encode(key: str) -> bytes:
    name = key.encode()
    if not 0 < len(name) <= NAME_BYTES:
        raise ValueError(f"slot key {key!r}: 1-{NAME_BYTES} bytes of UTF-8")
    return name.ljust(NAME_BYTES, b"\0")


class SharedSlots:
    """`Slots` over a file every worker maps; see the module docstring."""

    def __init__(self, path: Path, index: int) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        magic, workers, keys = _HEADER.unpack_from(self._map)
        if magic != MAGIC or keys != KEYS or len(self._map) != _COUNTS_AT + workers * KEYS * 8:
            self.close()
            raise ValueError(f"{path}: not a slots file of this version")
        if not 0 <= index < workers:
            self.close()
            raise ValueError(f"{path}: worker {index} of {workers}")
        self.workers = workers
        self.index = index
        self._counts = memoryview(self._map)[_COUNTS_AT:].cast("q")
        self._columns: dict[str, int] = {}
        with self._locked():
            self._zero_row(index)  # a new worker starts with no calls

    @classmethod
    def create(cls, path: Path, workers: int) -> SharedSlots:
        """Worker 0, before the others start: a zeroed file for `workers` rows (0600)."""
        size = _COUNTS_AT + workers * KEYS * 8
        data = bytearray(size)
        _HEADER.pack_into(data, 0, MAGIC, workers, KEYS)
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temporary, path)  # a worker never maps a half-written file
        return cls(path, 0)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _column(self, key: str, *, add: bool) -> int | None:
        """`key`'s column (held lock), added when `add` and new; None when absent or full."""
        column = self._columns.get(key)
        if column is not None:
            return column
        name = _encode(key)
        for index in range(KEYS):
            at = _NAMES_AT + index * NAME_BYTES
            found = self._map[at:at + NAME_BYTES]
            if found == name:
                self._columns[key] = index
                return index
            if found[0] == 0:
                if not add:
                    return None
                self._map[at:at + NAME_BYTES] = name
                self._columns[key] = index
                return index
        return None

    def _sum(self, column: int) -> int:
        counts = self._counts
        return sum(counts[row * KEYS + column] for row in range(self.workers))

    def _zero_row(self, row: int) -> None:
        start = row * KEYS
        self._counts[start:start + KEYS] = memoryview(bytes(KEYS * 8)).cast("q")

    def take(self, key: str, limit: int) -> bool:
        with self._locked():
            column = self._column(key, add=True)
            if column is None:  # more keys than KEYS: counted by nobody, limited by nothing
                return True
            if limit and self._sum(column) >= limit:
                return False
            self._counts[self.index * KEYS + column] += 1
            return True

    def give_back(self, key: str) -> None:
        with self._locked():
            column = self._column(key, add=False)
            cell = self.index * KEYS + (column or 0)
            if column is not None and self._counts[cell] > 0:
                self._counts[cell] -= 1

    def total(self, key: str) -> int:
        with self._locked():
            column = self._column(key, add=False)
            return 0 if column is None else self._sum(column)

    def forget_worker(self, index: int) -> None:
        """Worker `index` is gone, and its calls with it."""
        if 0 <= index < self.workers:
            with self._locked():
                self._zero_row(index)

    def close(self) -> None:
        with contextlib.suppress(AttributeError):
            self._counts.release()
        self._map.close()
        os.close(self._fd)
