"""Each loss against a direct, loop-by-loop computation of its formula (see training/trainers/losses.py)."""

import math

import numpy as np
import pytest
import torch

from training.trainers.losses import LossConfig, make_loss


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def elu(x, alpha):
    return x if x > 0 else alpha * (math.exp(x) - 1.0)


@pytest.fixture
def scores():
    generator = torch.Generator().manual_seed(3)
    return torch.randn(4, 9, generator=generator, dtype=torch.float64) * 2  # 4 rows: targets on the diagonal


def per_row(scores, row_loss):
    r = scores.numpy()
    return sum(row_loss(r[i, i], [r[i, j] for j in range(r.shape[1]) if j != i]) for i in range(r.shape[0]))


def softmax(values):
    e = np.exp(np.array(values) - max(values))
    return e / e.sum()


def test_bpr(scores):
    expected = per_row(scores, lambda t, neg: -np.mean([math.log(sigmoid(t - n)) for n in neg]))
    assert make_loss(LossConfig("bpr"))(scores, None).item() == pytest.approx(expected, rel=1e-9)


def test_top1(scores):
    expected = per_row(scores, lambda t, neg: np.mean([sigmoid(n - t) + sigmoid(n * n) for n in neg]))
    assert make_loss(LossConfig("top1"))(scores, None).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("elu_param", [0.0, 1.0])
def test_bpr_max(scores, elu_param):
    bpreg = 0.9
    act = (lambda x: elu(x, elu_param)) if elu_param > 0 else (lambda x: x)

    def row(t, neg):
        t, neg = act(t), [act(n) for n in neg]
        s = softmax(neg)  # over the negatives only: the target is not in its own softmax
        return (-math.log(sum(sj * sigmoid(t - n) for sj, n in zip(s, neg)))
                + bpreg * sum(sj * n * n for sj, n in zip(s, neg)))

    loss = make_loss(LossConfig("bpr-max", bpreg=bpreg, elu_param=elu_param))
    assert loss(scores, None).item() == pytest.approx(per_row(scores, row), rel=1e-9)


def test_top1_max(scores):
    def row(t, neg):
        t, neg = elu(t, 1.0), [elu(n, 1.0) for n in neg]
        s = softmax(neg)
        return sum(sj * (sigmoid(n - t) + sigmoid(n * n)) for sj, n in zip(s, neg))

    top1_max = make_loss(LossConfig("top1-max", elu_param=1.0))
    assert top1_max(scores, None).item() == pytest.approx(per_row(scores, row), rel=1e-9)


@pytest.mark.parametrize("logq", [0.0, 1.0])
def test_cross_entropy_with_logq(scores, logq):
    log_prob = torch.log(torch.linspace(0.05, 0.9, scores.shape[1], dtype=torch.float64))
    corrected = scores - logq * log_prob
    r = corrected.numpy()
    expected = sum(-(r[i, i] - math.log(np.exp(r[i]).sum())) for i in range(r.shape[0]))
    loss = make_loss(LossConfig("cross-entropy", logq=logq))
    assert loss(scores, log_prob).item() == pytest.approx(expected, rel=1e-9)


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="unknown loss"):
        LossConfig("hinge")
