"""Baselines: scores against literal, loop-by-loop computations of the papers' formulas on a toy session set;
ranks by the conservative-tie rule; a run on a real YOOCHOOSE slice."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.real_slices import yoochoose_slice
from training.data.click_log import ClickLog, EncodedSplit, ItemMap, Sessions
from training.data.datasets import load_dataset
from training.evaluation.baselines import (
    BASELINES,
    ItemKNNParams,
    STANParams,
    VSKNNParams,
    baseline_ranks,
    build_baseline,
    dense_scores,
    ranks_of,
    session_end_times,
)
from training.evaluation.evaluate import RankingMetrics, popularity_ranks

# Hand-made training sessions in start-time order (index = recency); items 0..7, item 7 is never clicked.
TOY_TRAIN = [[0, 1, 2], [1, 2, 3, 1], [2, 4], [0, 2, 5, 2], [3, 4, 5], [1, 5, 6, 0], [5, 2], [4, 4, 1]]
N_ITEMS = 8
TOY_PREFIXES = [[0], [2], [1, 2], [0, 5, 2], [4, 1, 4], [3, 1, 5, 6], [6, 6]]


def sessions_of(seqs: list[list[int]]) -> Sessions:
    offsets = np.concatenate(([0], np.cumsum([len(s) for s in seqs]))).astype(np.int64)
    return Sessions(offsets, np.asarray([i for s in seqs for i in s], dtype=np.int64), 0)


def last_positions(seq: list[int]) -> dict[int, int]:
    """item -> 1-based position of its last click"""
    return {item: p for p, item in enumerate(seq, start=1)}


# --- literal computations, from the papers' formulas ---

def naive_item_knn(prefix, n_sims, lam, alpha):
    occurs = [{n for n, s in enumerate(TOY_TRAIN) if i in s} for i in range(N_ITEMS)]

    def sim(i, j):
        if i == j or not occurs[i] & occurs[j]:
            return 0.0
        return len(occurs[i] & occurs[j]) / ((len(occurs[i]) + lam) ** alpha * (len(occurs[j]) + lam) ** (1 - alpha))

    current = prefix[-1]
    row = [sim(current, j) for j in range(N_ITEMS)]
    kept = sorted(range(N_ITEMS), key=lambda j: (-row[j], j))[:n_sims]
    return np.array([row[j] if j in kept else 0.0 for j in range(N_ITEMS)])


def naive_neighbours(prefix, weight_of_position, sample_size, k):
    """(session index, similarity) of the k neighbours: the most recent `sample_size` sessions sharing an item,
    similarity = sum of the weights of the shared items."""
    pos = last_positions(prefix)
    sharing = [n for n, s in enumerate(TOY_TRAIN) if set(s) & set(prefix)]
    if sample_size:
        sharing = sorted(sharing, reverse=True)[:sample_size]
    sims = {n: sum(weight_of_position(pos[i], len(prefix)) for i in set(TOY_TRAIN[n]) & set(prefix)) for n in sharing}
    return sorted(sims.items(), key=lambda kv: (-kv[1], -kv[0]))[:k]


def naive_vsknn(prefix, k, sample_size, idf_weighting):
    scores = np.zeros(N_ITEMS)
    for n, sim in naive_neighbours(prefix, lambda p, length: p / length, sample_size, k):
        for j in set(TOY_TRAIN[n]):
            idf = math.log(len(TOY_TRAIN) / sum(j in s for s in TOY_TRAIN))
            scores[j] += sim * (1 + idf_weighting * idf)
    return scores


def naive_stan(prefix, k, sample_size, l1, l2, l3, times=None, zero_shared=False):
    """session-rec's STAN (`knn/stan.py`): cosine similarity with position weights, times the neighbour's recency;
    w3 from the last position in n of an item s holds."""
    times = list(range(len(TOY_TRAIN))) if times is None else times
    pos_s = last_positions(prefix)
    w1 = {i: math.exp((p - len(prefix)) / l1) for i, p in pos_s.items()}
    norm_s = math.sqrt(sum(w ** 2 for w in w1.values()))
    sharing = [n for n, s in enumerate(TOY_TRAIN) if set(s) & set(prefix)]
    if sample_size:
        sharing = sorted(sharing, reverse=True)[:sample_size]
    sims = {}
    for n in sharing:
        cosine = sum(w1[i] for i in set(TOY_TRAIN[n]) & set(prefix)) / (norm_s * math.sqrt(len(set(TOY_TRAIN[n]))))
        sims[n] = cosine * math.exp(-(max(times) - times[n]) / l2)
    neighbours = sorted(sims.items(), key=lambda kv: (-kv[1], -kv[0]))[:k]
    scores = np.zeros(N_ITEMS)
    for n, sim in neighbours:
        pos_n = last_positions(TOY_TRAIN[n])
        star = max(p for p, i in enumerate(TOY_TRAIN[n], start=1) if i in pos_s)  # the latest click on a shared item
        for j, p in pos_n.items():
            w3 = 0.0 if p == star and zero_shared else math.exp(-abs(p - star) / l3)
            scores[j] += sim * w3
    return scores


CASES = [
    ("item_knn", ItemKNNParams(), lambda p: naive_item_knn(p, 100, 20.0, 0.5)),
    ("item_knn", ItemKNNParams(n_sims=2, lam=0.0, alpha=0.5), lambda p: naive_item_knn(p, 2, 0.0, 0.5)),
    ("item_knn", ItemKNNParams(n_sims=3, lam=1.5, alpha=0.8), lambda p: naive_item_knn(p, 3, 1.5, 0.8)),
    ("vsknn", VSKNNParams(), lambda p: naive_vsknn(p, 100, 1000, 0.0)),
    ("vsknn", VSKNNParams(k=2, sample_size=3, idf_weighting=1.0), lambda p: naive_vsknn(p, 2, 3, 1.0)),
    ("vsknn", VSKNNParams(k=3, sample_size=0, idf_weighting=0.5), lambda p: naive_vsknn(p, 3, 0, 0.5)),
    ("stan", STANParams(), lambda p: naive_stan(p, 100, 5000, 1.02, math.inf, 2.05)),
    ("stan", STANParams(lambda_time_sessions=2.0, zero_shared_item=True),
     lambda p: naive_stan(p, 100, 5000, 1.02, 2.0, 2.05, zero_shared=True)),
    ("stan", STANParams(k=2, sample_size=4, lambda_position=0.7, lambda_time_sessions=3.0, lambda_item=1.3),
     lambda p: naive_stan(p, 2, 4, 0.7, 3.0, 1.3)),
]


@pytest.mark.parametrize("name, params, naive", CASES)
def test_scores_match_the_formulas(name, params, naive):
    model = build_baseline(name, params, sessions_of(TOY_TRAIN), N_ITEMS)
    for prefix in TOY_PREFIXES:
        np.testing.assert_allclose(dense_scores(model, np.array(prefix)), naive(prefix), rtol=1e-12, atol=1e-15,
                                   err_msg=f"{name} {params} prefix {prefix}")


def test_stan_time_decay_uses_session_times_in_seconds():
    times = [0.0, 3600.0, 7200.0, 86_400.0, 90_000.0, 100_000.0, 400_000.0, 500_000.0]
    params = STANParams(k=3, lambda_time=50_000.0)
    model = build_baseline("stan", params, sessions_of(TOY_TRAIN), N_ITEMS, train_times=np.array(times))
    for prefix in TOY_PREFIXES:
        np.testing.assert_allclose(dense_scores(model, np.array(prefix)),
                                   naive_stan(prefix, 3, 5000, 1.02, 50_000.0, 2.05, times), rtol=1e-12, atol=1e-15)


def stan_scores(train, prefix, n_items=10, train_times=None, **params):
    model = build_baseline("stan", STANParams(**params), sessions_of(train), n_items,
                           train_times=None if train_times is None else np.array(train_times))
    return dense_scores(model, np.array(prefix))


def test_stan_position_decay_weighs_the_matching_click():
    # s = [0, 1]: A matches the click one step back (w1 = e^-1), B the current one (w1 = 1); both of length 2
    scores = stan_scores([[0, 5], [1, 6]], [0, 1], lambda_position=1.0, lambda_item=1.0)
    norm = math.sqrt(math.exp(-2) + 1) * math.sqrt(2)  # the cosine's |s| (weighted) and |n| terms
    np.testing.assert_allclose(scores[[5, 6]], [math.exp(-1) / norm * math.exp(-1), 1 / norm * math.exp(-1)])
    np.testing.assert_allclose(scores[[0, 1]], [math.exp(-1) / norm, 1 / norm])  # s's own items are scored too


def test_stan_similarity_is_a_cosine_shorter_neighbours_win():
    # one shared item each: A (2 items) has cosine 1/sqrt(2), the more recent B (4 items) 1/2; k=1 keeps A
    scores = stan_scores([[0, 1], [0, 2, 3, 4]], [0], k=1, lambda_item=1.0)
    np.testing.assert_allclose(scores[[0, 1, 2]], [1 / math.sqrt(2), math.exp(-1) / math.sqrt(2), 0.0])


def test_stan_recency_decay_in_sessions_and_in_seconds():
    # A and B alike but for age: 2 and 1 sessions (or days) before the latest session C
    train = [[0, 1], [0, 2], [5, 6]]
    by_order = stan_scores(train, [0], lambda_item=1.0, lambda_time_sessions=1.0)
    np.testing.assert_allclose(by_order[[1, 2]], np.exp([-2.0, -1.0]) * math.exp(-1) / math.sqrt(2))
    by_time = stan_scores(train, [0], lambda_item=1.0, train_times=[0.0, 86_400.0, 172_800.0], lambda_time=86_400.0)
    np.testing.assert_allclose(by_time, by_order)
    assert stan_scores(train, [0], lambda_item=1.0)[1] == stan_scores(train, [0], lambda_item=1.0)[2]  # no decay


def test_stan_item_decay_from_the_last_shared_click_of_the_neighbour():
    # n = [1, 7, 0, 5, 6] shares 1 (position 1) and 0 (position 3) with s = [0, 1]: distances count from position 3
    # (session-rec's i*, the latest click of n on an item of s), not from the position of s's latest item 1
    train = [[1, 7, 0, 5, 6]]
    scores = stan_scores(train, [0, 1], lambda_item=1.0)
    at_star = scores[0]
    np.testing.assert_allclose(scores[[1, 7, 5, 6]] / at_star, np.exp([-2.0, -1.0, -1.0, -2.0]))
    zeroed = stan_scores(train, [0, 1], lambda_item=1.0, zero_shared_item=True)
    assert zeroed[0] == 0.0 and zeroed[1] == scores[1] and zeroed[7] == scores[7]


def test_session_end_times_are_last_clicks():
    log = ClickLog(np.array(["a", "a", "b", "b", "b"], dtype=object), np.array(list("xyxyz"), dtype=object),
                   np.array([10.0, 20.0, 15.0, 30.0, 40.0]), "toy")
    assert session_end_times(log).tolist() == [20.0, 40.0]


@pytest.mark.parametrize("name, params, naive", CASES)
def test_ranks_are_conservative_and_in_click_order(name, params, naive):
    test_sessions = [[0, 1, 2, 7], [4], [2, 5, 2, 0], [6, 6, 3]]  # 7: never trained on, scores 0 everywhere
    model = build_baseline(name, params, sessions_of(TOY_TRAIN), N_ITEMS)
    expected = []
    for s in test_sessions:
        for t in range(1, len(s)):
            scores = naive(s[:t])
            expected.append(int((scores >= scores[s[t]]).sum()))  # every item scoring >= the target, itself too
    ranks = ranks_of(model, sessions_of(test_sessions))
    assert ranks.tolist() == expected
    assert ranks[2] == N_ITEMS  # the unseen item ties with every unscored item: the worst rank


def test_rank_counts_ties_against_the_target():
    # item 0 and item 3 each co-occur once with item 1 and have the same support: a tie, both get rank 2
    train = [[0, 1], [1, 3], [2, 4]]
    model = build_baseline("item_knn", ItemKNNParams(lam=0.0), sessions_of(train), 5)
    assert ranks_of(model, sessions_of([[1, 0], [1, 3], [1, 2]])).tolist() == [2, 2, 5]


def test_unknown_name_and_wrong_params_type():
    split = EncodedSplit(sessions_of(TOY_TRAIN), sessions_of([[0, 1]]), ItemMap([str(i) for i in range(N_ITEMS)]),
                         np.ones(N_ITEMS, np.int64))
    with pytest.raises(KeyError, match="known: item_knn, vsknn, stan"):
        baseline_ranks("sknn", None, split)
    with pytest.raises(TypeError, match="stan takes STANParams, not VSKNNParams"):
        baseline_ranks("stan", VSKNNParams(), split)


@pytest.mark.parametrize("name", list(BASELINES))
def test_real_slice_metrics_beat_random(name):
    train, test, item_map, popularity = yoochoose_slice()
    split = EncodedSplit(train, test, item_map, popularity)
    times = None
    if name == "stan":  # the real slice has timestamps: STAN's time decay in seconds
        times = session_end_times(load_dataset("yoochoose_rsc15_100k")[0].head_sessions(3000))
    ranks = baseline_ranks(name, None, split, train_times=times)
    assert len(ranks) == len(popularity_ranks(popularity, test))
    assert ranks.min() >= 1 and ranks.max() <= len(item_map)
    metrics = RankingMetrics.from_ranks(name, ranks, test.n_dropped_clicks)
    for value in [*metrics.recall.values(), *metrics.mrr.values()]:
        assert 0.0 <= value <= 1.0
    random_recall20 = 20 / len(item_map)
    assert metrics.recall[20] > 10 * random_recall20 and metrics.recall[20] > 0.2
