"""Neural and session-kNN suggestions fused per click: the one implementation, scored offline by
`training.evaluation.blended` and served by the worker (`stream_app.inference.blended_scorer`).

For one click, the neural model's top N (items a_i, scores s_1 >= ... >= s_N) and V-SKNN's top M (items b_j,
scores t_1 >= ... >= t_M >= 0), in one item numbering:

    n(a_i) = (s_i - s_N) / (s_1 - s_N)           min-max over the neural list (1 for all when s_1 = s_N)
    c(b_j) = t_j / t_1                           divided by the row's largest (0 for all when t_1 = 0)
    fused(x) = w * n(x) + (1 - w) * c(x)         over the union; a list without x gives it 0

and the K best of the union by fused score; ties go to the better place in the list of larger weight (the
neural one when w >= 0.5), then in the other. w = 1 is the neural ranking, w = 0 the kNN ranking, and an item
the neural model does not know (its list lacks it) is still served through its kNN score.

Why these normalisations: a neural score is a logit whose offset and scale no loss fixes (bpr-max and
cross-entropy leave them differently, and they drift between versions), so dividing by the largest fails on
negative logits and a softmax depends on their scale (a temperature to tune besides w); min-max puts every
version's list on [0, 1] and its N-th item at 0, the score of every item outside it, so the fused score has no
jump at the list's edge. V-SKNN's scores are sums of similarities, >= 0, and 0 for an item no neighbour holds:
divided by the largest they also lie on [0, 1], 0 keeping its meaning.
"""

from __future__ import annotations

import numpy as np

NO_ITEM = -1  # an empty place in a list (a click the neural model cannot score has a row of them)


def min_max(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each row's valid scores mapped onto [0, 1] (1 where they are all equal); 0 elsewhere."""
    high = np.where(valid, scores, -np.inf).max(axis=1, keepdims=True)
    low = np.where(valid, scores, np.inf).min(axis=1, keepdims=True)
    spread = high - low
    scaled = np.divide(scores - low, spread, out=np.ones_like(scores, dtype=np.float64), where=spread > 0)
    return np.where(valid, scaled, 0.0)


def by_max(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each row's valid scores (>= 0) divided by the row's largest; 0 elsewhere, and in a row of zeros."""
    kept = np.where(valid, scores, 0.0).astype(np.float64)
    high = kept.max(axis=1, keepdims=True)
    return np.divide(kept, high, out=np.zeros_like(kept), where=high > 0)


def blend(neural_items: np.ndarray, neural_scores: np.ndarray, knn_items: np.ndarray, knn_scores: np.ndarray,
          weight: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The K best items of each row's union and their fused scores (float64), best first (module docstring).

    `neural_items` [B, N] and `knn_items` [B, M] (int64, best first, `NO_ITEM` for an empty place; an item at
    most once per row and list), their scores alike. A row whose union holds fewer than K items ends in
    `NO_ITEM`s scored -inf."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    rows, n = neural_items.shape
    m = knn_items.shape[1]
    neural_valid, knn_valid = neural_items != NO_ITEM, knn_items != NO_ITEM
    items = np.concatenate([neural_items, knn_items], axis=1)
    fused = np.concatenate([weight * min_max(neural_scores, neural_valid),
                            (1.0 - weight) * by_max(knn_scores, knn_valid)], axis=1)
    absent = n + m  # the place of an item a list lacks: after every present one
    neural_place = np.broadcast_to(np.concatenate([np.arange(n), np.full(m, absent)]), items.shape).copy()
    knn_place = np.broadcast_to(np.concatenate([np.full(n, absent), np.arange(m)]), items.shape).copy()
    valid = np.concatenate([neural_valid, knn_valid], axis=1)

    # an item in both lists: its kNN entry joins its neural one (a stable sort by item puts the neural first)
    by_item = np.argsort(np.where(valid, items, np.iinfo(np.int64).max), axis=1, kind="stable")
    ordered = np.take_along_axis(items, by_item, axis=1)
    second = np.zeros(items.shape, dtype=bool)
    second[:, 1:] = (ordered[:, 1:] == ordered[:, :-1]) & np.take_along_axis(valid, by_item, axis=1)[:, 1:]
    row, column = np.nonzero(second)
    kept, joined = by_item[row, column - 1], by_item[row, column]
    fused[row, kept] += fused[row, joined]
    knn_place[row, kept] = knn_place[row, joined]
    valid[row, joined] = False

    major, minor = (neural_place, knn_place) if weight >= 0.5 else (knn_place, neural_place)
    order = np.lexsort((minor, major, np.where(valid, -fused, np.inf)), axis=1)[:, :k]
    best = np.take_along_axis(valid, order, axis=1)
    top_items = np.where(best, np.take_along_axis(items, order, axis=1), NO_ITEM)
    top_scores = np.where(best, np.take_along_axis(fused, order, axis=1), -np.inf)
    return top_items, top_scores
