"""Popularity-based negative sampling: items drawn with probability ∝ popularity^alpha.

Drawing per step is slow, so samples are pre-drawn in bulk (one vectorised inverse-CDF lookup over
millions of uniforms) and each step takes the next slice, as the official GRU4Rec's sample cache does; on a
GPU the cache lives there, one copy per refill.
`sampled_candidates` puts a mini-batch's candidates together from them (GRU4Rec's and NARM's trainers).
"""

from __future__ import annotations

import numpy as np
import torch


class PopularitySampler:
    def __init__(self, popularity: np.ndarray, n_sample: int, alpha: float, cache_size: int = 10_000_000,
                 seed: int = 0, device: torch.device | None = None):
        if n_sample <= 0:
            raise ValueError("n_sample must be positive")
        weights = np.asarray(popularity, dtype=np.float64) ** alpha
        self.probability = weights / weights.sum()
        self._cdf = np.cumsum(self.probability)
        self._cdf[-1] = 1.0
        self.n_sample = n_sample
        self._steps_per_refill = max(1, cache_size // n_sample)
        self._rng = np.random.default_rng(seed)
        self.device = device or torch.device("cpu")
        self._cache = torch.empty(0, n_sample, dtype=torch.int64, device=self.device)
        self._next = 0

    def _refill(self) -> None:
        uniforms = self._rng.random(self._steps_per_refill * self.n_sample)
        drawn = np.searchsorted(self._cdf, uniforms, side="right")
        self._cache = torch.from_numpy(drawn.reshape(self._steps_per_refill, self.n_sample)).to(self.device)
        self._next = 0

    def draw(self) -> torch.Tensor:
        """The next n_sample negatives, shared by every session in the mini-batch."""
        if self._next >= len(self._cache):
            self._refill()
        sample = self._cache[self._next]
        self._next += 1
        return sample


def sampled_candidates(targets: torch.Tensor, sampler: PopularitySampler | None, log_popularity: torch.Tensor,
                       logq: float, sample_alpha: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The batch's targets followed by the shared popularity samples, and (for logQ correction) the log of
    each candidate's sampling probability up to a constant: popularity for targets, popularity^alpha else."""
    negatives = sampler.draw() if sampler is not None else targets[:0]
    candidates = torch.cat([targets, negatives])
    if logq <= 0:
        return candidates, None
    return candidates, torch.cat([log_popularity[targets], sample_alpha * log_popularity[negatives]])
