"""GRU4Rec's model, optimiser and training on a slice of the real YOOCHOOSE log."""

import math

import numpy as np
import pytest
import torch

from models.gru4rec import GRU4Rec, GRU4RecConfig
from tests.real_slices import yoochoose_slice
from training.evaluation.evaluate import evaluate
from training.trainers import device
from training.trainers.gru4rec import GRU4RecTrainer, GRU4RecTraining, train_gru4rec
from training.trainers.optim import AdagradMomentum

SMALL = dict(layers=(32,), batch_size=32, n_sample=64, n_epochs=1, dropout_embed=0.0, dropout_hidden=0.0)


@pytest.mark.parametrize("constrained", [True, False])
def test_training_scores_equal_full_catalogue_scores(constrained):
    torch.manual_seed(0)
    model = GRU4Rec(GRU4RecConfig(n_items=50, layers=(8,), embedding=0 if constrained else 6,
                                  constrained_embedding=constrained)).eval()
    items, candidates = torch.tensor([3, 7, 7]), torch.tensor([7, 1, 3, 49, 1, 0])
    hidden = [torch.randn(3, 8)]
    rows = model.gather_rows(items, candidates)
    sampled, sampled_hidden = model.score_candidates(rows, hidden)
    full, full_hidden = model(items, hidden)
    torch.testing.assert_close(sampled, full[:, candidates])
    torch.testing.assert_close(sampled_hidden[0], full_hidden[0])


def test_written_out_gru_step_equals_torch_gru_cell():
    torch.manual_seed(2)
    cell = torch.nn.GRUCell(6, 5)
    x, h = torch.randn(4, 6), torch.randn(4, 5)
    torch.testing.assert_close(GRU4Rec.gru_step(cell, x, h), cell(x, h))


@pytest.mark.training
def test_bfloat16_matmuls_train_like_float32_and_keep_float32_state(monkeypatch):
    monkeypatch.setattr(device, "cpu_bfloat16_matmuls", lambda: True)  # bfloat16 even where the CPU emulates it
    train, test, _, popularity = yoochoose_slice()
    runs = {}
    for precision in ("float32", "bfloat16"):
        params = GRU4RecTraining(learning_rate=0.1, matmul_precision=precision, **SMALL)
        runs[precision] = train_gru4rec(train, popularity, params, progress=False)
    (fp32_model, fp32_history), (bf16_model, bf16_history) = runs["float32"], runs["bfloat16"]
    assert all(p.dtype == torch.float32 for p in bf16_model.parameters())
    assert bf16_history.epochs[0].loss == pytest.approx(fp32_history.epochs[0].loss, rel=0.01)
    assert not torch.equal(bf16_model.output_weights, fp32_model.output_weights)  # bfloat16 really ran
    assert (bf16_history.matmul_precision, fp32_history.matmul_precision) == ("bfloat16", "float32")
    metrics, baseline = evaluate(bf16_model, popularity, test, name="bfloat16")
    assert metrics.recall[20] > 2 * baseline.recall[20]



def test_unknown_matmul_precision_is_refused():
    with pytest.raises(ValueError, match="matmul_precision"):
        GRU4RecTraining(matmul_precision="float16")


def test_initialisation_follows_the_official_bounds():
    model = GRU4Rec(GRU4RecConfig(n_items=1000, layers=(64,)))
    assert model.output_weights.abs().max() <= math.sqrt(6 / (1000 + 64))
    assert model.grus[0].weight_hh.abs().max() <= math.sqrt(6 / (64 + 64))
    assert torch.count_nonzero(model.output_bias) == 0
    assert torch.count_nonzero(model.grus[0].bias_ih) == 0


def test_row_update_equals_the_dense_update_on_touched_rows_only():
    torch.manual_seed(1)
    table = torch.nn.Parameter(torch.randn(20, 4))
    before = table.detach().clone()
    dense = torch.nn.Parameter(table.detach().clone())
    rows_opt = AdagradMomentum([], [table], lr=0.1, momentum=0.5)
    dense_opt = AdagradMomentum([dense], [], lr=0.1, momentum=0.5)
    ids = torch.tensor([2, 5, 11])
    for _ in range(3):  # several steps so accumulators and momentum matter
        grad_rows = torch.randn(3, 4)
        rows_opt.step_rows(table, ids, grad_rows)
        dense.grad = torch.zeros(20, 4).index_copy_(0, ids, grad_rows)
        dense_opt.step_dense()
    torch.testing.assert_close(table.detach()[ids], dense.detach()[ids])
    untouched = torch.ones(20, dtype=torch.bool).index_fill_(0, ids, False)
    torch.testing.assert_close(table.detach()[untouched], before[untouched])


@pytest.mark.training
@pytest.mark.parametrize("loss", ["bpr", "top1", "bpr-max", "top1-max", "cross-entropy"])
def test_every_loss_learns_far_beyond_popularity(loss):
    train, test, _, popularity = yoochoose_slice()
    params = GRU4RecTraining(loss=loss, learning_rate=0.1, logq=1.0 if loss == "cross-entropy" else 0.0, **SMALL)
    model, history = train_gru4rec(train, popularity, params, progress=False)
    metrics, baseline = evaluate(model, popularity, test, name=loss)
    assert np.isfinite(history.epochs[0].loss)
    assert metrics.n_predictions == baseline.n_predictions == test.n_clicks - test.n_sessions
    assert metrics.recall[20] > 2 * baseline.recall[20]


@pytest.mark.training
def test_continued_training_is_training_longer():
    """Fitting one epoch, then one more, gives the weights of fitting two at once: the optimiser's
    accumulators, the sample stream and the dropout RNG carry on (what the warm-started retriever relies on)."""
    train, _, _, popularity = yoochoose_slice()
    params = GRU4RecTraining(**SMALL | {"dropout_embed": 0.2, "dropout_hidden": 0.2})
    at_once, in_two = GRU4RecTrainer(popularity, params), GRU4RecTrainer(popularity, params)
    at_once.fit(train, 2, progress=False)
    in_two.fit(train, 1, progress=False)
    in_two.fit(train, 1, progress=False)
    for a, b in zip(at_once.model.parameters(), in_two.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [e.epoch for e in in_two.history.epochs] == [1, 2]
    assert in_two.history.curve_events == at_once.history.curve_events
    fresh = GRU4RecTrainer(popularity, params).fit(train, 1, progress=False)
    assert not torch.equal(fresh.output_weights, in_two.model.output_weights)


@pytest.mark.parametrize("constrained", [True, False])
def test_a_step_updates_only_the_rows_it_used(constrained):
    model = GRU4Rec(GRU4RecConfig(n_items=10, layers=(4,), embedding=0 if constrained else 3,
                                  constrained_embedding=constrained))
    rows = model.gather_rows(items=torch.tensor([1, 2]), candidates=torch.tensor([2, 5, 7]))
    scores, _ = model.score_candidates(rows, model.initial_hidden(2))
    scores.sum().backward()
    updated = {table: ids.tolist() for table, ids, _ in model.row_updates(rows)}
    assert updated[model.output_bias] == [2, 5, 7]  # item 1 was only an input: its output bias is untouched
    if constrained:
        assert updated[model.output_weights] == [1, 2, 5, 7]
    else:
        assert updated[model.output_weights] == [2, 5, 7]
        assert updated[model.input_embedding] == [1, 2]
