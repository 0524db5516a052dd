"""Prefix samples: every click of a session but the first is the target of the clicks before it.

A session x_1..x_n gives n − 1 samples (x_1..x_k → x_{k+1}), k = 1..n−1, of which only the last L clicks
of the prefix are kept (x_{k−L+1}..x_k when k > L), in training and serving alike. The samples are not
copied out: each is (start, length, target) into the sessions' click array, found with a few vectorised
numpy operations, and a mini-batch is gathered into a padded [b, L_b] matrix (L_b its longest prefix)
only when it is needed. The samples come in click order, the order in which `popularity_ranks` and the
GRU4Rec evaluation visit the same targets.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from training.data.click_log import Sessions


@dataclass(frozen=True)
class PrefixBatch:
    items: torch.Tensor  # int64 [b, L_b]: each prefix's clicks from position 0, then padding (0)
    lengths: torch.Tensor  # int64 [b], 1..L
    targets: torch.Tensor  # int64 [b]: the click that follows
    positions: np.ndarray  # int64 [b]: index of each target in the sessions' click array

    def to(self, device: torch.device) -> PrefixBatch:
        """The batch's tensors on `device` (itself on the CPU); positions stay on the host."""
        return PrefixBatch(self.items.to(device), self.lengths.to(device), self.targets.to(device), self.positions)


@dataclass(frozen=True)
class Prefixes:
    clicks: np.ndarray  # the sessions' item array, shared, not copied
    starts: np.ndarray  # int64 [N]: index in `clicks` of each prefix's first kept click
    lengths: np.ndarray  # int64 [N]: kept clicks, 1..max_len
    max_len: int

    @classmethod
    def of(cls, sessions: Sessions, max_len: int) -> Prefixes:
        if max_len < 1:
            raise ValueError("max_len must be at least 1")
        is_target = np.ones(sessions.n_clicks, dtype=bool)
        is_target[sessions.offsets[:-1]] = False  # a session's first click has nothing before it
        targets = np.flatnonzero(is_target)
        session_start = np.repeat(sessions.offsets[:-1], sessions.lengths())[targets]
        starts = np.maximum(session_start, targets - max_len)
        return cls(sessions.items, starts, targets - starts, max_len)

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def positions(self) -> np.ndarray:
        return self.starts + self.lengths

    @property
    def targets(self) -> np.ndarray:
        return self.clicks[self.positions]

    def batch(self, index: np.ndarray) -> PrefixBatch:
        """The samples `index` as a left-aligned padded batch."""
        starts, lengths = self.starts[index], self.lengths[index]
        positions = np.arange(int(lengths.max()) if len(lengths) else 0)
        valid = positions < lengths[:, None]
        clicks = np.where(valid, self.clicks[np.where(valid, starts[:, None] + positions, 0)], 0)
        return PrefixBatch(torch.from_numpy(clicks), torch.from_numpy(lengths),
                           torch.from_numpy(self.clicks[starts + lengths]), starts + lengths)

    def batches(self, batch_size: int, rng: np.random.Generator | None = None) -> Iterator[PrefixBatch]:
        """Mini-batches of every sample, shuffled when an rng is given, in click order otherwise."""
        order = rng.permutation(len(self)) if rng is not None else np.arange(len(self))
        for first in range(0, len(self), batch_size):
            yield self.batch(order[first:first + batch_size])
