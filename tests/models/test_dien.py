"""DIEN's model, training, two-stage evaluation and serving graph on slices of the real click logs."""

from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from models.dien import DIEN, DIENConfig, DIENEnsemble
from models.export import export_dien
from stream_app.settings import get_settings
from tests.real_slices import yoochoose_slice
from training.data.click_log import EncodedSplit, Sessions
from training.data.prefixes import Prefixes
from training.data.readers import read_event_log, read_item_categories
from training.evaluation.evaluate import pairwise_auc, reranked_ranks, retrieve, step_model_scores
from training.model_training import reranker_inputs, stacked_training_data
from training.progress import StageClock
from training.trainers.dien import DIENTraining, fit_prior_weight, train_dien
from training.trainers.gru4rec import GRU4RecTraining, train_gru4rec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {"item_dim": 16, "category_dim": 8, "mlp": (32, 16), "batch_size": 128, "n_epochs": 1, "n_candidates": 20}


def _scoring_model(n_items: int, seed: int = 0, **config) -> DIEN:
    """An untrained DIEN whose output is not the zero it starts at (its last layer starts at zero)."""
    torch.manual_seed(seed)
    model = DIEN(DIENConfig(n_items=n_items, item_dim=8, mlp=(16, 8), **config))
    torch.nn.init.normal_(model.output[-1].weight)
    return model.eval()


@pytest.fixture(scope="module")
def retrieval():
    """A one-epoch GRU4Rec's top-20 for the slice's train and test prefixes: real candidates, cheaply."""
    train, test, _, popularity = yoochoose_slice()
    params = GRU4RecTraining(layers=(32,), batch_size=32, n_sample=256, n_epochs=1)
    retriever = step_model_scores(train_gru4rec(train, popularity, params, progress=False)[0])
    return retrieve(retriever, train, 20), retrieve(retriever, test, 20)


def _padded(sessions, count: int, max_len: int, pad_with: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch = Prefixes.of(sessions, max_len).batch(np.arange(count))
    items = torch.full((count, max_len), pad_with, dtype=torch.int64)
    items[:, : batch.items.shape[1]] = batch.items.masked_fill(
        torch.arange(batch.items.shape[1]) >= batch.lengths.unsqueeze(1), pad_with)
    return items, batch.lengths


def test_padding_changes_no_score():
    _, test, _, popularity = yoochoose_slice()
    model = _scoring_model(len(popularity))
    items, lengths = _padded(test, 40, model.config.max_len, pad_with=7)
    assert len(set(lengths.tolist())) > 3  # real prefixes of several lengths
    candidates = torch.randint(0, len(popularity), (40, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        batched = model(items, lengths, candidates)
        repadded = model(items.masked_fill(torch.arange(items.shape[1]) >= lengths.unsqueeze(1), 3), lengths,
                         candidates)
        alone = torch.cat([model(items[i : i + 1, : lengths[i]], lengths[i : i + 1], candidates[i : i + 1])
                           for i in range(40)])
    torch.testing.assert_close(batched, repadded, rtol=0, atol=0)
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


def test_output_layer_by_blocks_is_the_papers_mlp_over_the_concatenated_features():
    """`head` applies the first layer block by block (the history sum's once per session, the two candidate blocks
    folded into one matrix per session): the same logits as the MLP over [e_a ; Σe ; e_a ∘ Σe ; h'_T]."""
    _, test, _, popularity = yoochoose_slice()
    model = _scoring_model(len(popularity))
    items, lengths = _padded(test, 40, model.config.max_len, pad_with=0)
    candidates = torch.randint(0, len(popularity), (40, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        embedded, states, mask = model.extract(items, lengths)
        target = model.embed(candidates)
        evolved = torch.randn(target.shape, generator=torch.Generator().manual_seed(3))
        history_sum = (embedded * mask.unsqueeze(2)).sum(dim=1, keepdim=True).expand_as(target)
        paper = model.output(torch.cat([target, history_sum, target * history_sum, evolved], dim=-1)).squeeze(-1)
        torch.testing.assert_close(model.head(embedded, mask, target, evolved), paper, rtol=1e-5, atol=1e-5)


def test_attention_is_a_softmax_over_real_clicks_and_augru_follows_the_paper():
    model = _scoring_model(50)
    d = model.config.embedding_dim
    hidden, states = torch.randn(2, 3, d), torch.randn(2, 1, d)
    projected = model.evolution.project(states)
    attention = torch.tensor([[[0.0], [0.5], [1.0]], [[0.2], [0.0], [0.9]]])
    with torch.no_grad():
        stepped = model.evolution(projected, hidden, attention)
        w_u, w_r, w_h = model.evolution.input_gates.weight.chunk(3)
        b_u, b_r, b_h = model.evolution.input_gates.bias.chunk(3)
        u_u, u_r, u_h = model.evolution.hidden_gates.weight.chunk(3)
        u = torch.sigmoid(states @ w_u.T + b_u + hidden @ u_u.T)
        r = torch.sigmoid(states @ w_r.T + b_r + hidden @ u_r.T)
        candidate = torch.tanh(states @ w_h.T + b_h + r * (hidden @ u_h.T))
        expected = (1 - attention * u) * hidden + attention * u * candidate
    torch.testing.assert_close(stepped, expected)
    torch.testing.assert_close(stepped[0, 0], hidden[0, 0])  # no attention: the state carries over unchanged


def test_auxiliary_loss_is_the_papers_sum_over_real_next_clicks():
    model = _scoring_model(50)
    history = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    lengths = torch.tensor([4, 2])
    negatives = torch.tensor([[9, 10, 11, 12], [13, 14, 15, 16]])
    with torch.no_grad():
        embedded, states, mask = model.extract(history, lengths)
        loss = model.auxiliary_loss(embedded, states, mask, negatives)
        expected = 0.0
        for b, length in enumerate(lengths.tolist()):
            for t in range(length - 1):
                h = states[b, t]
                expected -= torch.log(torch.sigmoid(h @ model.embed(history[b, t + 1])))
                expected -= torch.log(1 - torch.sigmoid(h @ model.embed(negatives[b, t + 1])))
    torch.testing.assert_close(loss, expected)


@pytest.mark.training
def test_two_stage_ranks_reorder_only_the_top_n(retrieval):
    _, test, _, _popularity = yoochoose_slice()
    _, test_retrieval = retrieval
    prefixes = Prefixes.of(test, 19)
    in_top = (test_retrieval.top == prefixes.targets[:, None]).any(axis=1)
    assert 0 < in_top.sum() < len(in_top)  # some targets inside the top 20, some outside

    def oracle(items, lengths, candidates):
        """Knows each row's target: the score of the candidate equal to it is 1, every other 0."""
        rows = np.flatnonzero(in_top)
        rows = torch.from_numpy(rows[np.argsort(prefixes.lengths[rows], kind="stable")])[: len(candidates)]
        assert torch.equal(lengths, torch.from_numpy(prefixes.lengths)[rows])
        return (candidates == torch.from_numpy(prefixes.targets)[rows].unsqueeze(1)).float()

    # the oracle is called with only the rows whose target is in the top-N, shortest history first
    ranks = reranked_ranks(oracle, 19, test, test_retrieval, prior_weight=None, batch_size=len(prefixes))
    assert np.all(ranks[in_top] == 1)
    np.testing.assert_array_equal(ranks[~in_top], test_retrieval.ranks[~in_top])
    assert np.all(test_retrieval.ranks[~in_top] > 20)

    zero = lambda items, lengths, candidates: torch.zeros(candidates.shape)
    np.testing.assert_array_equal(reranked_ranks(zero, 19, test, test_retrieval, prior_weight=3.0),
                                  test_retrieval.ranks)  # a zero correction keeps the retriever's order
    assert np.all(reranked_ranks(zero, 19, test, test_retrieval, prior_weight=None)[in_top] == 20)  # all tied: last


@pytest.mark.training
def test_reranked_ranks_do_not_depend_on_how_predictions_are_batched(retrieval):
    """Batches are formed shortest history first (less padding): each prediction must rank as if scored alone."""
    _, test, _, popularity = yoochoose_slice()
    test_retrieval = retrieval[1]
    model = _scoring_model(len(popularity))
    batched = reranked_ranks(model, 19, test, test_retrieval, prior_weight=0.5)
    alone = reranked_ranks(model, 19, test, test_retrieval, prior_weight=0.5, batch_size=1)
    np.testing.assert_array_equal(batched, alone)
    assert np.any(batched != test_retrieval.ranks)  # the re-ranker did move targets


@pytest.mark.training
def test_training_learns_to_tell_the_next_click_from_sampled_items(retrieval):
    train, test, _, popularity = yoochoose_slice()
    train_retrieval, test_retrieval = retrieval
    params = DIENTraining(**SMALL | {"residual": False, "n_epochs": 2, "learning_rate": 3e-3})
    untrained = DIEN(params.model_config(len(popularity)))
    # its last layer starts at zero: every item scores the same, the AUC of a coin
    assert pairwise_auc(untrained, params.max_len, test, popularity, params.sample_alpha) == 0.5
    model, history = train_dien(train, popularity, params, train_retrieval, progress=False)
    assert len(history.epochs) == 2 and all(np.isfinite(e.loss) for e in history.epochs)
    auc = pairwise_auc(model, params.max_len, test, popularity, params.sample_alpha)
    assert auc > 0.6, auc
    ranks = reranked_ranks(model, params.max_len, test, test_retrieval, prior_weight=None)
    assert ranks.shape == test_retrieval.ranks.shape


@pytest.mark.training
def test_ensemble_members_are_the_dien_each_seed_trains_alone_and_their_logits_are_averaged(retrieval):
    train, test, _, popularity = yoochoose_slice()
    train_retrieval, test_retrieval = retrieval
    params = DIENTraining(**SMALL)
    ensemble, history = train_dien(train, popularity, replace(params, n_members=2), train_retrieval, progress=False)
    assert isinstance(ensemble, DIENEnsemble) and len(history.epochs) == 2
    for member, seed in zip(ensemble.members, (params.seed, params.seed + 1)):
        alone, _ = train_dien(train, popularity, replace(params, seed=seed), train_retrieval, progress=False)
        for (name, mine), theirs in zip(member.state_dict().items(), alone.state_dict().values()):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0, msg=name)
    first, second = ensemble.members
    assert not torch.equal(first.item_embedding.weight, second.item_embedding.weight)
    batch = Prefixes.of(test, params.max_len).batch(np.arange(32))
    candidates = torch.from_numpy(test_retrieval.top[:32].astype(np.int64))
    with torch.no_grad():
        torch.testing.assert_close(ensemble(batch.items, batch.lengths, candidates),
                                   (first(batch.items, batch.lengths, candidates)
                                    + second(batch.items, batch.lengths, candidates)) / 2)
    torch.testing.assert_close(ensemble.prior_weight, (first.prior_weight + second.prior_weight) / 2)
    with pytest.raises(ValueError):
        DIENTraining(n_members=0)


def test_categories_join_the_item_embedding():
    """e = [E_item[i] ; E_category[cat(i)]]: items of one category share the category half."""
    item_categories = torch.tensor([0, 1, 1, 2])
    torch.manual_seed(0)
    model = DIEN(DIENConfig(n_items=4, n_categories=3, item_dim=4, category_dim=2), item_categories)
    embedded = model.embed(torch.tensor([1, 2, 3]))
    assert embedded.shape == (3, 6)
    torch.testing.assert_close(embedded[0, 4:], embedded[1, 4:])
    assert not torch.equal(embedded[0, :4], embedded[1, :4]) and not torch.equal(embedded[1, 4:], embedded[2, 4:])
    with pytest.raises(ValueError):
        DIEN(DIENConfig(n_items=4, n_categories=3), None)


@pytest.mark.training
@pytest.mark.parametrize("members", [1, 2])
def test_onnx_graph_matches_torch_on_real_sessions(tmp_path, retrieval, members):
    """The serving graph runs the AUGRU over each batch's real clicks only, its rows sorted by length inside:
    its scores are torch's in any row order, with histories padded to the batch's longest or to L."""
    _, test, _, popularity = yoochoose_slice()
    _, test_retrieval = retrieval
    max_len = 10  # some of the slice's prefixes are longer
    model = _scoring_model(len(popularity), max_len=max_len) if members == 1 else DIENEnsemble(
        [_scoring_model(len(popularity), seed=seed, max_len=max_len) for seed in range(members)])
    session = ort.InferenceSession(str(export_dien(model, tmp_path / "dien.onnx")))
    prefixes = Prefixes.of(test, max_len)
    shuffled = np.random.default_rng(0).permutation(len(prefixes))
    assert len(set(prefixes.lengths[shuffled[:64]])) > 5 and max_len in prefixes.lengths[shuffled[:64]]
    assert prefixes.lengths[:64].max() < max_len
    single_clicks = np.flatnonzero(prefixes.lengths == 1)[:5]
    for rows in (np.arange(64), shuffled[:64], shuffled[64:67], single_clicks):  # several sizes and orders, one graph
        batch = prefixes.batch(rows)  # padded to its longest history
        candidates = torch.from_numpy(test_retrieval.top[rows].astype(np.int64))
        with torch.no_grad():
            expected = model(batch.items, batch.lengths, candidates).numpy()
        to_max_len = torch.zeros(len(rows), max_len, dtype=torch.int64)
        to_max_len[:, : batch.items.shape[1]] = batch.items
        scores = {items.shape[1]: session.run(None, {"items": items.numpy(), "lengths": batch.lengths.numpy(),
                                                     "candidates": candidates.numpy()})[0]
                  for items in (batch.items, to_max_len)}
        np.testing.assert_allclose(scores[batch.items.shape[1]], scores[max_len], rtol=0, atol=1e-5)
        for served in scores.values():
            np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-4)
            np.testing.assert_array_equal(np.argsort(-served, axis=1, kind="stable")[:, :5],
                                          np.argsort(-expected, axis=1, kind="stable")[:, :5])


@pytest.mark.training
def test_dien_trains_with_the_real_diginetica_categories():
    """The raw Diginetica sample's items get their categories from product-categories.csv."""
    data = get_settings().data_dir / "diginetica"
    log = read_event_log(data / "sample_train-item-views.csv.gz", session_key="session_id", item_key="item_id",
                         time_key="timeframe", time_unit="ms", date_key="eventdate")
    split = EncodedSplit.of(log, log.head_sessions(200))
    categories = read_item_categories(data / "product-categories.csv.gz", split.item_map)
    listed = pd.read_csv(data / "product-categories.csv.gz", sep=";", dtype=str).set_index("itemId").categoryId
    raw = listed.reindex(split.item_map.ids).to_numpy()
    assert np.all((categories == 0) == pd.isna(raw)) and (categories > 0).mean() > 0.99
    # one index per raw category, and one raw category per index
    pairs = pd.DataFrame({"index": categories, "raw": raw}).dropna()
    assert (pairs.groupby("raw")["index"].nunique() == 1).all() and (pairs.groupby("index").raw.nunique() == 1).all()

    params = DIENTraining(**SMALL | {"residual": False})
    model, history = train_dien(split.train, split.popularity, params, None, categories, progress=False)
    assert model.category_embedding.num_embeddings == categories.max() + 1
    assert np.isfinite(history.epochs[0].loss)


@pytest.mark.training
def test_prior_weight_starts_where_the_retrievers_own_softmax_fits_best(retrieval):
    train, _, _, _ = yoochoose_slice()
    train_retrieval, _ = retrieval
    targets = Prefixes.of(train, 19).targets
    weight = fit_prior_weight(train_retrieval, targets)
    inside = (train_retrieval.top == targets[:, None]).any(axis=1)
    scores = torch.from_numpy(train_retrieval.top_scores[inside])
    column = torch.from_numpy((train_retrieval.top[inside] == targets[inside, None]).argmax(axis=1))
    loss = {w: torch.nn.functional.cross_entropy(w * scores, column).item() for w in (weight / 2, weight, weight * 2)}
    assert loss[weight] <= min(loss.values())


@pytest.mark.training
def test_stacked_reranker_trains_on_later_sessions_with_a_retriever_that_never_saw_them():
    """DIEN's candidates come from a retriever trained on the earlier sessions only: a retriever given the
    later ones too would change them."""
    train, test, item_map, popularity = yoochoose_slice()
    split = EncodedSplit(train, test, item_map, popularity)
    retriever = GRU4RecTraining(layers=(32,), batch_size=32, n_sample=256, n_epochs=1)
    params = DIENTraining(**SMALL | {"holdout_fraction": 0.25})
    stacked = stacked_training_data(params, retriever, split, progress=False)
    sessions, retrieved = stacked.sessions, stacked.retrieved
    assert stacked.fold_trainer is None  # no warm start asked: the fold retriever is not kept
    earlier, later = train.split_at(round(0.75 * train.n_sessions))
    np.testing.assert_array_equal(sessions.items, later.items)
    assert len(retrieved.ranks) == len(Prefixes.of(later, params.max_len))
    fold_model = train_gru4rec(earlier, popularity, retriever, progress=False)[0]
    np.testing.assert_array_equal(retrieved.top, retrieve(step_model_scores(fold_model), later, 20).top)
    assert not np.array_equal(retrieved.top, retrieve(step_model_scores(train_gru4rec(train, popularity, retriever,
                                                                                      progress=False)[0]),
                                                      later, 20).top)


@pytest.mark.training
def test_cross_fitted_folds_each_take_candidates_from_a_retriever_trained_on_every_other_session():
    """holdout_folds = 2 over the latest half: each fold's candidates come from a retriever that saw the earlier
    sessions and the other fold, and no retriever saw the fold it scores."""
    train, test, item_map, popularity = yoochoose_slice()
    split = EncodedSplit(train, test, item_map, popularity)
    retriever = GRU4RecTraining(layers=(32,), batch_size=32, n_sample=256, n_epochs=1)
    params = DIENTraining(**SMALL | {"holdout_fraction": 0.5, "holdout_folds": 2})
    stacked = stacked_training_data(params, retriever, split, progress=False)
    sessions, retrieved = stacked.sessions, stacked.retrieved
    half, three_quarters = round(0.5 * train.n_sessions), round(0.75 * train.n_sessions)
    earlier, latest = train.split_at(half)
    np.testing.assert_array_equal(sessions.items, latest.items)
    first_fold, second_fold = latest.split_at(three_quarters - half)
    tops = []
    for held, other in ((first_fold, second_fold), (second_fold, first_fold)):
        seen = Sessions.concat([earlier, other])
        assert seen.n_sessions == train.n_sessions - held.n_sessions
        fold_model = train_gru4rec(seen, popularity, retriever, progress=False)[0]
        tops.append(retrieve(step_model_scores(fold_model), held, 20).top)
    assert len(retrieved.ranks) == len(Prefixes.of(latest, params.max_len))
    np.testing.assert_array_equal(retrieved.top, np.concatenate(tops))


def test_warm_start_needs_the_one_gru4rec_fold_retriever():
    DIENTraining(holdout_fraction=0.2, retriever_warm_start_epochs=2)
    for wrong in ({"holdout_fraction": 0.0}, {"holdout_folds": 2}, {"retriever": "narm"}):
        with pytest.raises(ValueError, match="retriever_warm_start_epochs"):
            DIENTraining(**{"holdout_fraction": 0.2, "retriever_warm_start_epochs": 2} | wrong)


@pytest.mark.training
def test_without_holdout_the_reranker_trains_on_every_training_prefix(retrieval):
    train, test, item_map, popularity = yoochoose_slice()
    split = EncodedSplit(train, test, item_map, popularity)
    params = DIENTraining(**SMALL | {"holdout_fraction": 0.0})
    asked = []
    retrieval_of = lambda sessions, n: asked.append((sessions, n)) or retrieval[0]
    sessions, retrieved = reranker_inputs(params, None, retrieval_of, split, StageClock())
    assert len(asked) == 1 and asked[0][0] is train and asked[0][1] == params.n_candidates
    assert sessions is train and retrieved is retrieval[0]
