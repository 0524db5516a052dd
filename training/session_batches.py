"""Session-parallel mini-batches (Hidasi et al. 2016, Fig. 2), used for training and evaluation alike.

B slots each follow one session, in session start order; every step feeds each slot's current click
and asks for its next one. When a slot's session ends, the next unstarted session takes that slot and
the slot's hidden state must be reset; when no session is left, the slot is dropped and the batch
shrinks. There is no backpropagation through time: each step is trained on its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from training.data import Sessions


@dataclass(frozen=True)
class SessionStep:
    items: torch.Tensor  # [B] current click of each slot
    targets: torch.Tensor  # [B] the click that follows it
    keep: torch.Tensor | None  # which of the previous step's slots are still in use; None: all of them
    reset: torch.Tensor | None  # [B] bool: slots that start a new session now; None: none do
    positions: np.ndarray  # [B] index in `sessions.items` of each target: the click-order key of a prediction


def session_parallel_steps(sessions: Sessions, batch_size: int) -> Iterator[SessionStep]:
    offsets, items = sessions.offsets, sessions.items
    n_slots = min(batch_size, sessions.n_sessions)
    next_session = n_slots
    start, end = offsets[:n_slots].copy(), offsets[1 : n_slots + 1].copy()
    kept = np.arange(n_slots)  # each slot's position at the previous yielded step
    dropped = False
    reset = np.zeros(n_slots, dtype=bool)
    while len(start):
        steps = int((end - start).min()) - 1  # every slot can advance this far before a session ends
        for i in range(steps):
            yield SessionStep(
                items=torch.from_numpy(items[start + i]),
                targets=torch.from_numpy(items[start + i + 1]),
                keep=torch.from_numpy(kept) if dropped else None,
                reset=torch.from_numpy(reset) if reset.any() else None,
                positions=start + i + 1,
            )
            if i == 0:
                kept, dropped, reset = np.arange(len(start)), False, np.zeros(len(start), dtype=bool)
        start += steps
        finished = np.flatnonzero(end - start <= 1)
        refill = np.arange(next_session, min(next_session + len(finished), sessions.n_sessions))
        next_session += len(refill)
        refilled = finished[: len(refill)]
        start[refilled], end[refilled] = offsets[refill], offsets[refill + 1]
        reset[refilled] = True
        if len(refill) < len(finished):
            alive = np.ones(len(start), dtype=bool)
            alive[finished[len(refill) :]] = False
            kept, reset, start, end = kept[alive], reset[alive], start[alive], end[alive]
            dropped = True


def apply_resets(hidden: list[torch.Tensor], step: SessionStep) -> list[torch.Tensor]:
    """Drop the slots no longer used, then zero the hidden state of slots that start a new session."""
    if step.keep is not None:
        hidden = [h[step.keep] for h in hidden]
    if step.reset is not None:
        hidden = [h.masked_fill(step.reset.unsqueeze(1), 0.0) for h in hidden]
    return hidden
