"""Session-parallel batches: every (click → next click) pair once, hidden reset exactly at session starts."""

from collections import Counter

import numpy as np
import pytest
import torch

from tests.real_slices import yoochoose_slice
from training.data.click_log import Sessions
from training.data.session_batches import apply_resets, session_parallel_steps


def consecutive_pairs(sessions: Sessions) -> Counter:
    pairs = Counter()
    for a, b in zip(sessions.offsets[:-1], sessions.offsets[1:]):
        items = sessions.items[a:b]
        pairs.update(zip(items[:-1].tolist(), items[1:].tolist()))
    return pairs


@pytest.mark.parametrize("batch_size", [1, 7, 64, 5000])
def test_every_pair_once_and_resets_at_session_starts(batch_size):
    train, _, _, _ = yoochoose_slice()
    first_items = set(train.items[train.offsets[:-1]].tolist())
    # The "hidden state" of a slot remembers the target it was last asked for (+1, so 0 means reset):
    # a slot that continues its session must now be fed exactly that item.
    hidden = [torch.zeros(min(batch_size, train.n_sessions), 1, dtype=torch.float64)]
    seen, starts = Counter(), 0
    for step in session_parallel_steps(train, batch_size):
        hidden = apply_resets(hidden, step)
        remembered = hidden[0][:, 0].long() - 1
        continuing = remembered >= 0
        assert torch.equal(remembered[continuing], step.items[continuing])
        assert set(step.items[~continuing].tolist()) <= first_items
        starts += int((~continuing).sum())
        seen.update(zip(step.items.tolist(), step.targets.tolist()))
        hidden = [(step.targets + 1).to(torch.float64).unsqueeze(1)]
    assert seen == consecutive_pairs(train)
    assert starts == int((train.lengths() >= 2).sum())  # a session's state starts fresh exactly once


def test_single_click_sessions_are_skipped_but_do_not_break_slots():
    sessions = Sessions(offsets=np.array([0, 1, 4, 5, 7, 8]), items=np.array([9, 1, 2, 3, 9, 4, 5, 9]),
                        n_dropped_clicks=0)
    pairs = Counter()
    for step in session_parallel_steps(sessions, 2):
        pairs.update(zip(step.items.tolist(), step.targets.tolist()))
    assert pairs == Counter({(1, 2): 1, (2, 3): 1, (4, 5): 1})
