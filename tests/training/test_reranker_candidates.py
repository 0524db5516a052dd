"""The count of candidates DIEN re-ranks when serving, chosen on validation sessions held out of its training."""

import numpy as np
import pytest
import torch

from tests.real_slices import yoochoose_slice
from training.data.click_log import Sessions
from training.data.prefixes import Prefixes
from training.evaluation.evaluate import Retrieval
from training.reranker_candidates import choose_count, held_out
from training.trainers.dien import DIENTraining

N = 30


def _retrieval(sessions: Sessions, max_len: int) -> tuple[Retrieval, np.ndarray]:
    """A top-N per prefix holding its target at a known column (column i % N for prediction i), and those columns."""
    prefixes = Prefixes.of(sessions, max_len)
    targets = prefixes.targets
    columns = np.arange(len(targets)) % N
    n_items = int(sessions.items.max()) + 1
    top = (targets[:, None] + 1 + np.arange(N)[None, :]) % n_items  # never the target (n_items > N)
    top[np.arange(len(targets)), columns] = targets
    scores = np.tile(np.arange(N, 0, -1, dtype=np.float32), (len(targets), 1))
    return Retrieval(columns + 1, top.astype(np.int32), scores), columns


def test_validation_is_the_latest_sessions_with_their_own_candidate_rows():
    train, *_ = yoochoose_slice()
    params = DIENTraining(validation_fraction=0.25)
    retrieved, _ = _retrieval(train, params.max_len)
    data = held_out(params, train, retrieved)
    earlier, latest = train.split_at(round(0.75 * train.n_sessions))
    np.testing.assert_array_equal(data.sessions.items, earlier.items)
    np.testing.assert_array_equal(data.validation.items, latest.items)
    rows = len(Prefixes.of(earlier, params.max_len))
    assert len(data.validation_retrieved.ranks) == len(Prefixes.of(latest, params.max_len))
    np.testing.assert_array_equal(data.retrieved.top, retrieved.top[:rows])
    np.testing.assert_array_equal(data.validation_retrieved.top, retrieved.top[rows:])
    assert held_out(DIENTraining(validation_fraction=0.0), train, retrieved).validation is None


@pytest.mark.parametrize("tolerance", [0.001, 0.05, 1.0])
def test_the_served_count_is_the_smallest_within_tolerance_of_the_best(tolerance):
    """A re-ranker that knows each validation prefix's next click lifts it to rank 1 whenever it is among the
    candidates scored: the figures per count follow from where the targets sit, and the choice from the rule."""
    _, test, *_ = yoochoose_slice()
    params = DIENTraining(validation_fraction=0.5, n_candidates=N, candidate_counts=(5, 10, 20),
                          candidates_tolerance=tolerance)
    retrieved, columns = _retrieval(test, params.max_len)
    data = held_out(params, test, retrieved)
    prefixes = Prefixes.of(data.validation, params.max_len)
    batch = prefixes.batch(np.arange(len(prefixes)))
    next_click = {}
    for items, length, target in zip(batch.items.tolist(), batch.lengths.tolist(), prefixes.targets.tolist()):
        next_click.setdefault(tuple(items[:length]), set()).add(target)

    def oracle(items: torch.Tensor, lengths: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        known = [next_click[tuple(row[:n])] for row, n in zip(items.tolist(), lengths.tolist())]
        return torch.tensor([[float(c in k) for c in row] for row, k in zip(candidates.tolist(), known)])

    choice = choose_count(oracle, params, data, prior_weight=None)
    validation_columns = columns[len(data.retrieved.ranks):]
    assert sorted(choice.figures) == [5, 10, 20, N]
    expected = {}
    for n in (5, 10, 20, N):
        lifted = validation_columns < n
        ranks = np.where(lifted, 1, validation_columns + 1)
        # a history seen with several next clicks lifts all of them: at most ranks 1..k, as the code counts ties
        expected[n] = ((ranks <= 20).mean(), np.where(ranks <= 20, 1.0 / ranks, 0.0).mean())
        assert choice.figures[n].recall[20] == pytest.approx(expected[n][0])
        assert choice.figures[n].mrr[20] == pytest.approx(expected[n][1], abs=0.02)
    best = (max(r for r, _ in expected.values()), max(m for _, m in expected.values()))
    within = [n for n, (r, m) in expected.items() if r >= best[0] - tolerance and m >= best[1] - tolerance]
    assert choice.count == min(within)
    assert choice.to_dict()["serving_candidates"] == choice.count


def test_without_validation_sessions_every_candidate_is_served():
    train, *_ = yoochoose_slice()
    params = DIENTraining(validation_fraction=0.0, n_candidates=N)
    retrieved, _ = _retrieval(train, params.max_len)
    choice = choose_count(lambda *_: None, params, held_out(params, train, retrieved), prior_weight=None)
    assert choice.count == N and choice.figures == {}
