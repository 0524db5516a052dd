"""The blend of a neural list and a kNN list: w = 1 is the neural ranking, w = 0 the kNN one, an item only the kNN
list holds is served, the normalised scores add up as the docstring's formula says, and rows are independent."""

from __future__ import annotations

import numpy as np
import pytest

from stream_app.inference.blend import NO_ITEM, blend


def lists(seed: int, rows: int = 32, n: int = 30, m: int = 25, n_items: int = 60):
    """Random neural lists (logits of either sign, best first) and kNN lists (>= 0, best first, with ties and
    zeros as V-SKNN's topped-up lists have), overlapping in part."""
    rng = np.random.default_rng(seed)
    neural_items = np.stack([rng.choice(n_items, n, replace=False) for _ in range(rows)])
    neural_scores = -np.sort(-rng.normal(0, 3, (rows, n)), axis=1).astype(np.float32)
    knn_items = np.stack([rng.choice(n_items, m, replace=False) for _ in range(rows)])
    knn_scores = -np.sort(-np.round(rng.exponential(1.0, (rows, m)), 1), axis=1).astype(np.float32)
    knn_scores[:, -5:] = 0.0
    return neural_items, neural_scores, knn_items, knn_scores


@pytest.mark.parametrize("seed", range(3))
def test_weight_one_is_the_neural_ranking_and_zero_the_knn_ranking(seed):
    neural_items, neural_scores, knn_items, knn_scores = lists(seed)
    # whole lists: their last places tie at 0 with the items only the other list holds
    neural_only, _ = blend(neural_items, neural_scores, knn_items, knn_scores, 1.0, neural_items.shape[1])
    assert (neural_only == neural_items).all()
    knn_only, _ = blend(neural_items, neural_scores, knn_items, knn_scores, 0.0, knn_items.shape[1])
    assert (knn_only == knn_items).all()


def test_an_item_only_the_knn_list_holds_is_served_and_a_row_without_neural_list_is_the_knns():
    neural_items = np.array([[1, 2, 3], [NO_ITEM, NO_ITEM, NO_ITEM]])
    neural_scores = np.array([[5.0, 4.0, 3.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    knn_items = np.array([[9, 1, 8], [9, 7, 8]])
    knn_scores = np.array([[4.0, 1.0, 0.0], [3.0, 2.0, 1.0]], dtype=np.float32)
    items, scores = blend(neural_items, neural_scores, knn_items, knn_scores, 0.5, 3)
    # row 0: 1 = 0.5 * 1 + 0.5 * 0.25, 9 = 0.5 * 1 (the item the neural model does not know), 2 = 0.5 * 0.5
    assert items[0].tolist() == [1, 9, 2]
    assert scores[0].tolist() == pytest.approx([0.625, 0.5, 0.25])
    assert items[1].tolist() == [9, 7, 8]  # a click the neural model cannot score: the kNN list alone
    assert scores[1].tolist() == pytest.approx([0.5, 1 / 3, 1 / 6])


@pytest.mark.parametrize("weight", [0.2, 0.7])
def test_fused_scores_follow_the_formula_and_rows_are_independent(weight):
    neural_items, neural_scores, knn_items, knn_scores = lists(7, rows=8)
    items, scores = blend(neural_items, neural_scores, knn_items, knn_scores, weight, 40)
    for row in range(8):
        low, high = neural_scores[row].min(), neural_scores[row].max()
        fused = {}
        for item, score in zip(neural_items[row].tolist(), neural_scores[row].tolist()):
            fused[item] = weight * (score - low) / (high - low)
        for item, score in zip(knn_items[row].tolist(), knn_scores[row].tolist()):
            fused[item] = fused.get(item, 0.0) + (1 - weight) * score / knn_scores[row].max()
        best = sorted(fused.values(), reverse=True)[:40]
        assert scores[row].tolist() == pytest.approx(best, abs=1e-6)
        assert [fused[item] for item in items[row].tolist()] == pytest.approx(best, abs=1e-6)
        alone = blend(neural_items[row:row + 1], neural_scores[row:row + 1], knn_items[row:row + 1],
                      knn_scores[row:row + 1], weight, 40)
        assert alone[0][0].tolist() == items[row].tolist()  # the same list in a batch as alone


def test_a_weight_outside_zero_one_is_refused():
    neural_items, neural_scores, knn_items, knn_scores = lists(0, rows=1)
    with pytest.raises(ValueError, match="weight"):
        blend(neural_items, neural_scores, knn_items, knn_scores, 1.5, 5)
