"""The most recent sessions, indexed click by click, for session-kNN scoring (`stream_app.inference.session_knn`,
`stream_app.inference.stan`).

A session gets the next number at its first click (so numbers are in start order, as the offline baseline's
sessions are) and the slot `number % capacity`: when the index is full, a new session takes the slot of the
oldest one, which is forgotten. Each slot holds the session's distinct items, in order of first click, each beside
the 1-based position of its last click in the session (int32 pairs: STAN's p_n), and, in fixed arrays, the
session's clicks so far, its last click's time (STAN's t_n) and its last click's offset in its partition. Each
item holds the numbers of the sessions that clicked it, ascending, in an int64 array. The oldest session is
always at the front of its items' arrays, so forgetting it only counts a dead entry there; an array drops its
dead entries once they are half of it, which keeps memory within about twice the live entries.

A worker indexes its own clicks as it serves them and its clicks reader indexes them again later, and a reader
that restarts reads its window again: a click at or before its session's last indexed offset is one indexed
already, and counting it again would shift the session's positions. A session's clicks come from one partition
(they are keyed by session), in offset order from each source. Why a worker builds the index from the whole clicks
topic: docs/serving.md (Session-kNN).
"""

from __future__ import annotations

import bisect
import struct
from array import array
from collections.abc import Hashable
from operator import itemgetter

import numpy as np

PAIR = struct.Struct("<ii")  # (item, position of its last click) in a session's slot
ITEM = "i"  # int32 items and positions in a session's slot
COMPACT_AT = 8  # an item's array drops its dead entries once there are this many and they are half of it


class SessionIndex:
    """The last `capacity` sessions to start, as sets of items (`add` one click at a time)."""

    seconds = True  # sessions' times are their last clicks' (STAN's t_n)

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.started = 0  # sessions numbered so far; the live ones are max(0, started - capacity) .. started - 1
        self.number_of: dict[Hashable, int] = {}  # live session key -> its number
        self._keys: list[Hashable | None] = [None] * capacity  # per slot
        self._items: list[bytes] = [b""] * capacity  # per slot: the session's (item, last position) pairs, int32
        self._clicks = array("i", bytes(4 * capacity))  # per slot: the session's clicks so far
        self._times = array("d", bytes(8 * capacity))  # per slot: the session's last click time, seconds
        self._offsets = array("q", bytes(8 * capacity))  # per slot: the session's last click offset (-1: none)
        self.latest_time = 0.0  # the latest click's time (STAN's t_s)
        self._holders: list[array] = []  # per item: numbers of the sessions holding it, ascending
        self._dead: list[int] = []  # per item: forgotten sessions at the front of its holders

    @property
    def n_sessions(self) -> int:
        return min(self.started, self.capacity)

    @property
    def n_items(self) -> int:
        """One more than the largest item ever added."""
        return len(self._holders)

    def add(self, key: Hashable, item: int, time: float = 0.0, offset: int | None = None) -> int:
        """Index one click of session `key` on `item` (>= 0) at `time` (seconds) and `offset` in its partition
        (None: a click never indexed before); returns the session's number."""
        number = self.number_of.get(key)
        if number is None:
            number = self._start(key)
        slot = number % self.capacity
        if offset is not None:
            if offset <= self._offsets[slot]:
                return number
            self._offsets[slot] = offset
        position = self._clicks[slot] = self._clicks[slot] + 1
        self._times[slot] = time
        if time > self.latest_time:
            self.latest_time = time
        held, pair = self._items[slot], PAIR.pack(item, position)
        at = held.find(pair[:4])
        while at % PAIR.size and at > 0:  # the bytes of a position, or across two entries: not the item
            at = held.find(pair[:4], at + 1)
        if at >= 0:  # a re-click: its position moves
            self._items[slot] = held[:at] + pair + held[at + PAIR.size:]
            return number
        self._items[slot] = held + pair
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

    def indexed(self, key: Hashable, offset: int) -> bool:
        """Whether the click of session `key` at `offset` is indexed already (`add` would skip it)."""
        number = self.number_of.get(key)
        return number is not None and offset <= self._offsets[number % self.capacity]

    def _start(self, key: Hashable) -> int:
        number = self.started
        if number >= self.capacity:
            self._forget(number - self.capacity)
        self.started += 1
        slot = number % self.capacity
        self._keys[slot], self._items[slot] = key, b""
        self._clicks[slot], self._offsets[slot] = 0, -1
        self.number_of[key] = number
        return number

    def _forget(self, number: int) -> None:
        """Forget the oldest session: it is the first live entry of each of its items' holders."""
        slot = number % self.capacity
        del self.number_of[self._keys[slot]]
        self._keys[slot] = None
        for item in memoryview(self._items[slot]).cast(ITEM)[::2]:
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
        pairs, lengths = self._pairs(sessions)
        return pairs[:, 0].astype(np.int64), lengths

    def clicks_of(self, sessions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pairs, lengths = self._pairs(sessions)
        return pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64), lengths

    def _pairs(self, sessions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The (item, position) pairs of each session, concatenated (int32, one row each); and how many of each's."""
        held = self._held(sessions)
        pairs = np.frombuffer(b"".join(held), dtype=np.int32).reshape(-1, 2)
        return pairs, np.fromiter(map(len, held), dtype=np.int64, count=len(held)) // PAIR.size

    def _held(self, sessions: np.ndarray) -> tuple[bytes, ...]:
        """Each session's slot, in one C call rather than a Python loop."""
        if not len(sessions):
            return ()
        held = itemgetter(*(sessions % self.capacity).tolist())(self._items)
        return (held,) if len(sessions) == 1 else held

    def sizes(self, sessions: np.ndarray) -> np.ndarray:
        held = self._held(sessions)
        return np.fromiter(map(len, held), dtype=np.int64, count=len(held)) // PAIR.size

    def times_of(self, sessions: np.ndarray) -> np.ndarray:
        return np.frombuffer(self._times, dtype=np.float64)[sessions % self.capacity]

    def support_of(self, items: np.ndarray) -> np.ndarray:
        return np.array([len(self._holders[item]) - self._dead[item] for item in items.tolist()], dtype=np.int64)
