"""The most recent sessions, indexed click by click, for session-kNN scoring (`stream_app.inference.session_knn`).

A session gets the next number at its first click (so numbers are in start order, as the offline baseline's
sessions are) and the slot `number % capacity`: when the index is full, a new session takes the slot of the
oldest one, which is forgotten. Each slot holds the session's distinct items (int32, in order of first click);
each item holds the numbers of the sessions that clicked it, ascending, in an int64 array. The oldest session
is always at the front of its items' arrays, so forgetting it only counts a dead entry there; an array drops
its dead entries once they are half of it, which keeps memory within about twice the live entries. Why a
worker builds it from the whole clicks topic: docs/serving.md (Session-kNN).
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Hashable
from operator import itemgetter

import numpy as np

ITEM = "i"  # int32 items in a session's slot
COMPACT_AT = 8  # an item's array drops its dead entries once there are this many and they are half of it


class SessionIndex:
    """The last `capacity` sessions to start, as sets of items (`add` one click at a time)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.started = 0  # sessions numbered so far; the live ones are max(0, started - capacity) .. started - 1
        self.number_of: dict[Hashable, int] = {}  # live session key -> its number
        self._keys: list[Hashable | None] = [None] * capacity  # per slot
        self._items: list[bytes] = [b""] * capacity  # per slot: the session's distinct items, int32
        self._holders: list[array] = []  # per item: numbers of the sessions holding it, ascending
        self._dead: list[int] = []  # per item: forgotten sessions at the front of its holders

    @property
    def n_sessions(self) -> int:
        return min(self.started, self.capacity)

    @property
    def n_items(self) -> int:
        """One more than the largest item ever added."""
        return len(self._holders)

    def add(self, key: Hashable, item: int) -> int:
        """Index one click of session `key` on `item` (>= 0); returns the session's number."""
        number = self.number_of.get(key)
        if number is None:
            number = self._start(key)
        slot = number % self.capacity
        held = self._items[slot]
        if item in memoryview(held).cast(ITEM):
            return number
        self._items[slot] = held + item.to_bytes(4, "little", signed=True)
        if item >= len(self._holders):
            grown = item + 1 - len(self._holders)
            self._holders += [array("q") for _ in range(grown)]
            self._dead += [0] * grown
        holders = self._holders[item]
        if not holders or holders[-1] < number:
            holders.append(number)
        else:  # a session that started earlier clicks the item after a later one did
            bisect.insort(holders, number, lo=self._dead[item])
        return number

    def _start(self, key: Hashable) -> int:
        number = self.started
        if number >= self.capacity:
            self._forget(number - self.capacity)
        self.started += 1
        slot = number % self.capacity
        self._keys[slot], self._items[slot] = key, b""
        self.number_of[key] = number
        return number

    def _forget(self, number: int) -> None:
        """Forget the oldest session: it is the first live entry of each of its items' holders."""
        slot = number % self.capacity
        del self.number_of[self._keys[slot]]
        self._keys[slot] = None
        for item in memoryview(self._items[slot]).cast(ITEM):
            dead = self._dead[item] = self._dead[item] + 1
            holders = self._holders[item]
            if dead >= COMPACT_AT and 2 * dead >= len(holders):
                del holders[:dead]
                self._dead[item] = 0
        self._items[slot] = b""

    def holders(self, items: np.ndarray, most_recent: int) -> tuple[np.ndarray, np.ndarray]:
        parts = []  # memoryview slices, joined once: no numpy array per item
        for item in items.tolist():
            if item >= len(self._holders):
                parts.append(b"")
                continue
            held = memoryview(self._holders[item])
            start = self._dead[item] if not most_recent else max(self._dead[item], len(held) - most_recent)
            parts.append(held[start:])
        flat = np.frombuffer(b"".join(parts), dtype=np.int64)
        return flat, np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))

    def items_of(self, sessions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not len(sessions):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        slots = itemgetter(*(sessions % self.capacity).tolist())(self._items)  # one C call, not a Python loop
        if len(sessions) == 1:
            slots = (slots,)
        flat = np.frombuffer(b"".join(slots), dtype=np.int32).astype(np.int64)
        return flat, np.fromiter(map(len, slots), dtype=np.int64, count=len(slots)) // 4

    def support_of(self, items: np.ndarray) -> np.ndarray:
        return np.array([len(self._holders[item]) - self._dead[item] for item in items.tolist()], dtype=np.int64)
