"""Offline figures of the kNN pipelines a worker serves: V-SKNN's list and a neural list blended with it, for every
prediction of the models' protocol (`training.evaluation.evaluate`), computed by the code the worker serves with.

V-SKNN's list of a prediction is `stream_app.inference.served_baseline.ServedBaseline`'s (the worker's kNN pipeline:
its best N by score, ties to the lower item number, topped up with the most clicked items) over an index of the
training sessions, reading the whole prefix, as the V-SKNN baseline row does. The blend is
`stream_app.inference.blend` of that list and a retriever's top N (`Retrieval`). A list ranks its target
conservatively among the items it holds (ties count against it); a target outside the list, or scoring 0 (as every
item outside does), gets the catalogue's size: figures at cut-offs below N are exact, as `graph_retrieval`'s. The kNN
and blended scores stay float64, as computed: rounded to float32 they would tie where they differ, against the target.
"""

from __future__ import annotations

import numpy as np

from stream_app.inference.blend import blend
from stream_app.inference.served_baseline import ItemVocabulary, ServedBaseline
from stream_app.inference.session_knn import VSKNN, VSKNNParams
from training.data.click_log import EncodedSplit
from training.data.prefixes import Prefixes
from training.evaluation.baselines import TrainIndex
from training.evaluation.evaluate import Retrieval

BATCH = 4096  # predictions scored or blended at once: bounds the [batch, N + M] arrays of a blend


def list_ranks(top: np.ndarray, top_scores: np.ndarray, targets: np.ndarray, n_items: int) -> np.ndarray:
    """Each target's conservative rank in its row's list (module docstring)."""
    found = top == targets[:, None]
    target_score = np.where(found, top_scores, np.inf).min(axis=1, keepdims=True)
    inside = found.any(axis=1) & (target_score[:, 0] > 0)
    return np.where(inside, (top_scores >= target_score).sum(axis=1), n_items)


def knn_retrieval(split: EncodedSplit, params: VSKNNParams, n: int) -> Retrieval:
    """V-SKNN's served list (its best `n`) and the target's rank for every prediction of `split.test`, click order,
    over an index of `split.train`."""
    n_items = len(split.item_map)
    longest = int(split.test.lengths().max(initial=1))
    scorer = ServedBaseline("vsknn", "offline", ItemVocabulary(split.item_map.ids), split.popularity,
                            VSKNN(TrainIndex.of(split.train, n_items), params), longest, n)
    prefixes = Prefixes.of(split.test, longest)
    tops, scores, ranks = [], [], []
    for first in range(0, len(prefixes), BATCH):
        starts = prefixes.starts[first:first + BATCH]
        lengths = prefixes.lengths[first:first + BATCH]
        windows = [prefixes.clicks[start:start + length] for start, length in zip(starts, lengths)]
        result = scorer.score(prefixes.clicks[starts + lengths - 1], None, windows)
        tops.append(result.top_items.astype(np.int32))
        scores.append(result.top_scores)
        ranks.append(list_ranks(result.top_items, result.top_scores, prefixes.clicks[starts + lengths], n_items))
    if not tops:
        return Retrieval(np.zeros(0, np.int64), np.zeros((0, n), np.int32), np.zeros((0, n)))
    return Retrieval(np.concatenate(ranks), np.concatenate(tops), np.concatenate(scores))


def blended_ranks(neural: Retrieval, knn: Retrieval, weight: float, targets: np.ndarray, n_items: int) -> np.ndarray:
    """The rank of every prediction's target in the blend of its neural and kNN lists (as long as the neural one)."""
    n = neural.top.shape[1]
    ranks = []
    for first in range(0, len(targets), BATCH):
        rows = slice(first, first + BATCH)
        items, scores = blend(neural.top[rows].astype(np.int64), neural.top_scores[rows],
                              knn.top[rows].astype(np.int64), knn.top_scores[rows], weight, n)
        ranks.append(list_ranks(items, scores, targets[rows], n_items))
    return np.concatenate(ranks) if ranks else np.zeros(0, np.int64)
