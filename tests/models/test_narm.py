"""NARM's model, prefix samples, training, evaluation and serving graph on a slice of the real YOOCHOOSE log."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.export import export_narm
from models.narm import NARM, NARMConfig
from tests.real_slices import yoochoose_slice
from training.data.click_log import Sessions
from training.data.prefixes import Prefixes
from training.evaluation.evaluate import (
    evaluate_prefix_model,
    popularity_ranks,
    prefix_model_ranks,
)
from training.trainers.narm import NARMTraining, train_narm

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {"embedding_dim": 32, "hidden_size": 32, "batch_size": 64, "learning_rate": 0.01, "n_epochs": 1}
TOP_K = 20


@pytest.fixture(scope="module")
def trained():
    train, test, _, popularity = yoochoose_slice()
    model, _ = train_narm(train, popularity, NARMTraining(**SMALL), progress=False)
    return model, test


def _session(sessions: Sessions, s: int) -> np.ndarray:
    return sessions.items[sessions.offsets[s]:sessions.offsets[s + 1]]


def test_padding_gets_no_attention_and_changes_no_score():
    _, test, _, popularity = yoochoose_slice()
    torch.manual_seed(0)
    model = NARM(NARMConfig(n_items=len(popularity), embedding_dim=16, hidden_size=24)).eval()
    states, last = torch.randn(3, 5, 24), torch.randn(3, 24)
    mask = torch.arange(5) < torch.tensor([[5], [2], [1]])
    alpha = model.attention(states, last, mask)
    assert torch.all(alpha[~mask] == 0) and torch.all(alpha[mask] != 0)

    sessions = [_session(test, s)[-model.config.max_len:] for s in range(12)]
    lengths = torch.tensor([len(s) for s in sessions])
    assert len(set(lengths.tolist())) > 2  # real sessions of several lengths
    padded = torch.randint(0, len(popularity), (len(sessions), int(lengths.max())))  # padding: any item id
    for row, clicks in zip(padded, sessions):
        row[:len(clicks)] = torch.from_numpy(clicks)
    with torch.no_grad():
        batched = model(padded, lengths)
        alone = torch.cat([model(torch.from_numpy(s).unsqueeze(0), torch.tensor([len(s)])) for s in sessions])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


def test_training_packs_the_sessions_and_scores_as_serving_does():
    """Training steps the GRU over real clicks only; without dropout it must score as the padded serving path."""
    _, test, _, popularity = yoochoose_slice()
    torch.manual_seed(0)
    model = NARM(NARMConfig(n_items=len(popularity), embedding_dim=16, hidden_size=24, dropout_embed=0.0,
                            dropout_context=0.0))
    sessions = [_session(test, s)[-model.config.max_len:] for s in range(12)]
    lengths = torch.tensor([len(s) for s in sessions])
    padded = torch.zeros(len(sessions), int(lengths.max()), dtype=torch.int64)
    for row, clicks in zip(padded, sessions):
        row[:len(clicks)] = torch.from_numpy(clicks)
    with torch.no_grad():
        packed = model.train()(padded, lengths)
        serving = model.eval()(padded, lengths)
    packed_states = model.train().states(torch.ones(3, 4, dtype=torch.int64), torch.tensor([4, 2, 1]))
    assert packed_states[2, 1:].abs().sum() == 0  # packed: nothing after a session's last click
    torch.testing.assert_close(packed, serving, rtol=1e-5, atol=1e-5)


def test_training_touches_the_item_rows_of_real_clicks_and_candidates_only():
    """Padding looks up no item: lazy Adam must not step the row of whatever id the padding holds."""
    torch.manual_seed(0)
    model = NARM(NARMConfig(n_items=50, embedding_dim=8, hidden_size=8, sparse_item_gradients=True)).train()
    items = torch.tensor([[5, 6, 7], [8, 0, 0], [9, 10, 0]])  # padded with 0 after each session's clicks
    candidates = torch.tensor([11, 12, 13])
    model.score_candidates(items, torch.tensor([3, 1, 2]), candidates).sum().backward()
    touched = set(model.item_embedding.grad.coalesce().indices()[0].tolist())
    assert touched == {5, 6, 7, 8, 9, 10, 11, 12, 13}


def test_prefixes_are_every_click_after_the_first_with_its_last_clicks():
    sessions = Sessions(offsets=np.array([0, 1, 6, 8]), items=np.array([9, 1, 2, 3, 4, 5, 7, 8]), n_dropped_clicks=0)
    prefixes = Prefixes.of(sessions, max_len=3)
    batch = prefixes.batch(np.arange(len(prefixes)))
    assert batch.targets.tolist() == [2, 3, 4, 5, 8]
    assert batch.lengths.tolist() == [1, 2, 3, 3, 1]
    assert batch.items.tolist() == [[1, 0, 0], [1, 2, 0], [1, 2, 3], [2, 3, 4], [7, 0, 0]]  # last 3 clicks, padded

    train, test, _, popularity = yoochoose_slice()
    for data in (train, test):
        prefixes = Prefixes.of(data, max_len=19)
        assert len(prefixes) == data.n_clicks - data.n_sessions
        assert prefixes.lengths.max() == min(19, data.lengths().max() - 1)
        assert len(prefix_model_ranks(lambda items, lengths: torch.zeros(len(items), len(popularity)),
                                      data, max_len=19)) == len(popularity_ranks(popularity, data))
    prefixes = Prefixes.of(train, max_len=19)
    longest = int(np.argmax(train.lengths()))
    assert train.lengths()[longest] > 20  # the slice has sessions to truncate
    end = train.offsets[longest + 1] - 1  # the session's last click is the target of its last prefix
    k = np.flatnonzero(prefixes.starts + prefixes.lengths == end)
    assert prefixes.batch(k).items[0].tolist() == _session(train, longest)[-20:-1].tolist()
    shuffled = list(prefixes.batches(1000, np.random.default_rng(0)))
    assert sorted(torch.cat([b.targets for b in shuffled]).tolist()) == sorted(prefixes.targets.tolist())


def test_prefix_ranks_are_conservative_on_ties():
    sessions = Sessions(offsets=np.array([0, 3]), items=np.array([1, 2, 3]), n_dropped_clicks=0)
    assert prefix_model_ranks(lambda items, lengths: torch.zeros(len(items), 30), sessions, 19).tolist() == [30, 30]


@pytest.mark.training
@pytest.mark.parametrize("loss", ["full-softmax", "bpr", "top1", "bpr-max", "top1-max", "cross-entropy"])
def test_every_loss_learns_far_beyond_popularity(loss):
    train, test, _, popularity = yoochoose_slice()
    if loss == "full-softmax":
        params = NARMTraining(full_softmax=True, **SMALL)
    else:
        params = NARMTraining(full_softmax=False, loss=loss, n_sample=256,
                              logq=1.0 if loss == "cross-entropy" else 0.0, **SMALL)
    model, history = train_narm(train, popularity, params, progress=False)
    metrics, baseline = evaluate_prefix_model(model, popularity, test, loss, params.max_len)
    assert np.isfinite(history.epochs[0].loss)
    assert history.epochs[0].events == train.n_clicks - train.n_sessions
    assert metrics.n_predictions == baseline.n_predictions == test.n_clicks - test.n_sessions
    assert metrics.recall[20] > 3 * baseline.recall[20]  # 4.2x to 6.5x over seeds and losses


@pytest.mark.training
def test_onnx_graph_matches_torch_on_real_sessions(trained, tmp_path):
    model, test = trained
    max_len = model.config.max_len
    session = ort.InferenceSession(str(export_narm(model, tmp_path / "narm.onnx", top_k=TOP_K)))
    assert not model.training  # exporting leaves dropout off
    for batch in (1, 7):  # the batch dimension is dynamic
        first = 3  # skip a few sessions so the batch of 1 is not a one-click prefix
        clicks = [_session(test, s)[-max_len:] for s in range(first, first + batch)]
        items = np.zeros((batch, max_len), dtype=np.int64)
        for row, c in zip(items, clicks):
            row[:len(c)] = c
        lengths = np.array([len(c) for c in clicks], dtype=np.int64)
        top_items, top_scores = session.run(None, {"items": items, "lengths": lengths})
        with torch.no_grad():
            expected_scores, expected_items = torch.topk(model(torch.from_numpy(items), torch.from_numpy(lengths)),
                                                         TOP_K)
        np.testing.assert_array_equal(top_items, expected_items.numpy())
        np.testing.assert_allclose(top_scores, expected_scores.numpy(), rtol=1e-4, atol=1e-4)
        narrower = session.run(None, {"items": items[:, :lengths.max()], "lengths": lengths})  # L is dynamic too
        np.testing.assert_array_equal(narrower[0], top_items)
        np.testing.assert_allclose(narrower[1], top_scores, rtol=1e-5, atol=1e-5)
