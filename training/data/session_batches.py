"""Session-parallel mini-batches (Hidasi et al. 2016, Fig. 2), used for training and evaluation alike.

B slots each follow one session, in session start order; every step feeds each slot's current click
and asks for its next one. When a slot's session ends, the next unstarted session takes that slot and
the slot's hidden state must be reset; when no session is left, the slot is dropped and the batch
shrinks. There is no backpropagation through time: each step is trained on its own.

On a GPU an epoch's steps are put together on the host first and copied to the device in one transfer
per field (`_on_device`), each step a view of it: no host→device copy per step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from training.data.click_log import Sessions


@dataclass(frozen=True)
class SessionStep:
    items: torch.Tensor  # [B] current click of each slot
    targets: torch.Tensor  # [B] the click that follows it
    keep: torch.Tensor | None  # which of the previous step's slots are still in use; None: all of them
    reset: torch.Tensor | None  # [B] bool: slots that start a new session now; None: none do
    positions: np.ndarray  # [B] index in `sessions.items` of each target: the click-order key of a prediction


def session_parallel_steps(sessions: Sessions, batch_size: int,
                           device: torch.device | None = None) -> Iterator[SessionStep]:
    """The steps of one pass over `sessions`, their tensors on `device` (the CPU's by default)."""
    steps = _host_steps(sessions, batch_size)
    if device is None or device.type == "cpu":
        return steps
    return _on_device(list(steps), device)


def _on_device(steps: list[SessionStep], device: torch.device) -> Iterator[SessionStep]:
    def staged(parts: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        present = [p for p in parts if p is not None]
        if not present:
            return parts
        views = iter(torch.cat(present).to(device).split([len(p) for p in present]))
        return [None if p is None else next(views) for p in parts]

    fields = [staged([getattr(s, name) for s in steps]) for name in ("items", "targets", "keep", "reset")]
    for step, items, targets, keep, reset in zip(steps, *fields):
        yield SessionStep(items, targets, keep, reset, step.positions)


def _host_steps(sessions: Sessions, batch_size: int) -> Iterator[SessionStep]:
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
