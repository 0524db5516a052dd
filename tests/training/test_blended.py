"""The offline figures of the kNN pipelines come from the code the worker serves with: V-SKNN's served lists rank the
targets as the V-SKNN baseline does, and the offline blend of a version's neural lists with them is, click by click,
what the worker's recommender serves for the same sessions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream_app.inference.blend import blend
from stream_app.inference.blended_scorer import BlendedScorer
from stream_app.inference.events import Click
from stream_app.inference.live_knn import LiveNeighbours
from stream_app.inference.scoring import Scorer
from stream_app.inference.session_knn import VSKNNParams
from stream_app.inference.sessions import SessionRecommender
from stream_app.inference.suggestion import SourcedClick
from tests.real_slices import yoochoose_slice
from training.data.click_log import EncodedSplit
from training.data.datasets import load_dataset
from training.evaluation.baselines import baseline_ranks
from training.evaluation.blended import knn_retrieval
from training.evaluation.evaluate import graph_retrieval

PARAMS = VSKNNParams(k=50, sample_size=500)


def test_the_served_knn_lists_rank_the_targets_as_the_vsknn_baseline():
    train, test, item_map, popularity = yoochoose_slice()
    split = EncodedSplit(train, test, item_map, popularity)
    lists = knn_retrieval(split, PARAMS, 100)
    baseline = baseline_ranks("vsknn", PARAMS, split)
    assert lists.top.shape == (len(baseline), 100)
    inside = baseline < 100  # a list of 100 knows ranks below 100 exactly
    assert inside.mean() > 0.3
    assert (lists.ranks[inside] == baseline[inside]).all()
    assert (lists.ranks[~inside] >= 100).all()


def served_lists(neighbours: LiveNeighbours, scorer: Scorer, sessions: list[list[str]], weight: float,
                 longest: int) -> list[list[tuple[str, float]]]:
    """Every suggestion the worker's recommender serves along `sessions` (the blend over `neighbours`, which the
    test sessions do not join), as (item, score) lists, click order."""
    blended = BlendedScorer(scorer, neighbours.scorer(scorer, longest, PARAMS), weight)
    recommender = SessionRecommender(blended, top_k=scorer.graph_top_k, max_history=longest, session_ttl=math.inf,
                                     exclude_seen=False)
    clicks = [SourcedClick(Click(f"test-{number}", item, 0.0), partition=0, offset=offset)
              for number, session in enumerate(sessions) for offset, item in enumerate(session)]
    result = recommender.recommend(clicks, {}, now=0.0)
    return [list(zip(s.items, s.scores)) for s in result.suggestions]


@pytest.mark.parametrize("weight", [0.3, 0.8])
def test_the_offline_blend_is_what_the_worker_serves(scorer, weight):
    train_log, test_log = load_dataset("yoochoose_rsc15_100k")  # the tiny artifact's data (tests/conftest.py)
    split = EncodedSplit.of(train_log.head_sessions(2000), test_log.head_sessions(100))
    ids = [str(item) for item in split.item_map.ids]
    assert scorer.item_ids == ids
    longest = int(split.test.lengths().max())

    neural = graph_retrieval(scorer, split.test)  # the version's own graph, from a zero state per session
    knn = knn_retrieval(split, PARAMS, scorer.graph_top_k)
    offline_items, offline_scores = blend(neural.top.astype(np.int64), neural.top_scores, knn.top.astype(np.int64),
                                          knn.top_scores, weight, scorer.graph_top_k)

    neighbours = LiveNeighbours(10_000, PARAMS)
    for item in ids:  # numbered as the offline items are: V-SKNN's ties go to the lower number
        neighbours.vocabulary.add(item)
    for s in range(split.train.n_sessions):
        for item in split.train.items[split.train.offsets[s]:split.train.offsets[s + 1]].tolist():
            neighbours.observe(f"train-{s}", ids[item])
    sessions = [[ids[i] for i in split.test.items[split.test.offsets[s]:split.test.offsets[s + 1]].tolist()]
                for s in range(split.test.n_sessions)]
    served = served_lists(neighbours, scorer, sessions, weight, longest)

    predictions, first = [], 0  # a session's last click predicts nothing
    for session in sessions:
        predictions += served[first:first + len(session) - 1]
        first += len(session)
    assert len(predictions) == len(offline_items) > 100
    for row, suggestion in enumerate(predictions):
        assert [item for item, _ in suggestion] == [ids[i] for i in offline_items[row].tolist()]
        assert [score for _, score in suggestion] == offline_scores[row].tolist()
