"""Training DIEN as the re-ranker of a retriever's top-N: positives against easy and hard negatives.

Every prefix of every session given (its last L clicks, as for NARM) is a sample whose positive is
the click that followed; `training.model_training` gives the latest training sessions and, for each, the top-N of a
retriever that never saw that session (`holdout_fraction`, `holdout_folds`), not the prefixes the serving
retriever was trained on. Its negatives are of two kinds, drawn afresh each epoch:
- `n_popular_negatives` items drawn ∝ popularity^sample_alpha: the easy ones, which teach the catalogue;
- `n_hard_negatives` items from the retriever's own top-N for that prefix (its best `n_candidates`,
  the target left out): what the first stage scores high but the user did not click, which is exactly
  what the re-ranker has to sort at serving time.
The target loss is a softmax cross-entropy over [positive, negatives] (`loss="softmax"`): the re-ranker's
job is an ordering within one session's candidates. `loss="logloss"` is the paper's pointwise click
log-loss over the same pairs. The paper's auxiliary loss (`DIEN.auxiliary_loss`, its own popularity samples)
is added with weight `aux_weight`; each step's total is divided by its number of samples.

`residual` (default): the two-stage score of a candidate is w·(the retriever's score) + DIEN's logit, and
DIEN is trained inside that sum, so it learns what the retriever gets wrong instead of relearning what it
gets right. The retriever's score is exact inside its top-N; a popularity negative outside it gets the N-th
score (an upper bound, `Retrieval.prior`). The hard negatives, k drawn uniformly from the top-N's other N − 1
items, each stand for (N − 1)/k of them (the sampled-softmax log-Q correction). w (`DIEN.prior_weight`) is
learnt with the rest, from the value that fits the retriever's own top-N best (`fit_prior_weight`): GRU4Rec's
bpr-max scores are too flat to be softmax logits, and with w fixed at 1 DIEN spent itself on sharpening them
and ranked worse than the retriever alone (docs/experiments.md). Only prefixes whose next click is in the top-N
train in this mode: the others cannot be re-ranked into place at serving time. Without `residual`, DIEN's
logit alone orders the candidates (the paper's use: each target scored on its own).
Optimiser: Adam (the official code's), lr 1e-3.

On a GPU (`device`) the model and Adam's state live there; the negatives and the retriever's scores of each
mini-batch are drawn on the host, as on the CPU (the same draws), and the batch is copied over.

`n_members` > 1 trains that many DIENs alike but for their seeds (`seed`, `seed` + 1, ...) and serves the
average of their logits (`DIENEnsemble`): on Diginetica two members re-rank better than either alone
(docs/experiments.md), at twice the training time and serving cost.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveInt

from models.dien import DIEN, DIENConfig, DIENEnsemble
from training.data.click_log import Sessions
from training.data.prefixes import Prefixes
from training.evaluation.evaluate import Retrieval
from training.progress import EpochCallback, EpochProgress, TrainingHistory
from training.trainers.device import CPU
from training.trainers.sampling import PopularitySampler

AUTO_RETRIEVER = "auto"  # `retriever`: chosen on validation before DIEN trains (`training.retriever_choice`)


@dataclass(frozen=True)
class DIENTraining:
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "activation": ("prelu", "dice"), "loss": ("softmax", "logloss"),
        "retriever": ("gru4rec", "narm", AUTO_RETRIEVER),
    }
    item_dim: PositiveInt = 32
    category_dim: PositiveInt = 16
    max_len: PositiveInt = 19
    mlp: tuple[PositiveInt, ...] = (200, 80)
    activation: str = "prelu"  # "dice" is the paper's; its batch statistics come from the sampled candidates
    batch_size: PositiveInt = 256
    learning_rate: NonNegativeFloat = 1e-3
    n_epochs: NonNegativeInt = 2
    n_popular_negatives: NonNegativeInt = 4
    n_hard_negatives: NonNegativeInt = 16
    sample_alpha: NonNegativeFloat = 0.75  # popularity^alpha for the easy and the auxiliary negatives
    aux_weight: NonNegativeFloat = 1.0
    loss: str = "softmax"  # or "logloss"
    retriever: str = "gru4rec"  # the first stage: "gru4rec", "narm", or "auto": the better Recall@N on validation
    n_candidates: PositiveInt = 100  # N: the retriever's top-N, re-ranked at serving time
    residual: bool = True  # two-stage score = retriever score + DIEN logit
    categories: str = ""  # item → category file (`training.data.readers.read_item_categories`); "": items by id alone
    # stacking (`training.model_training.stacked_training_data`): DIEN trains on the latest `holdout_fraction` of the
    # training sessions, cut into `holdout_folds` folds, each re-ranking a retriever trained (its settings, at
    # most `holdout_retriever_epochs`) on every other training session; 0: on every training prefix,
    # re-ranking the retriever that saw them all
    holdout_fraction: float = 0.2
    holdout_folds: int = 1
    holdout_retriever_epochs: NonNegativeInt = 4
    # > 0 (one fold, GRU4Rec): the serving retriever is that fold retriever trained this many more epochs on every
    # training session, instead of a new one trained from scratch: a shorter retrain, for a weaker retriever and
    # pipeline (docs/experiments.md)
    retriever_warm_start_epochs: NonNegativeInt = 0
    # the candidates served (`training.reranker_candidates`): the smallest of `candidate_counts` (up to N) whose
    # Recall@20 and MRR@20, on the latest `validation_fraction` of DIEN's stacked sessions held out of its training,
    # are within `candidates_tolerance` of the best count's; validation_fraction 0 (or no stacking): all N
    validation_fraction: float = 0.1
    candidate_counts: tuple[PositiveInt, ...] = (10, 20, 30, 40, 50, 60, 80)
    candidates_tolerance: NonNegativeFloat = 0.001
    refit: bool = True  # after the choice, DIEN trains again on every stacked session, the validation ones included
    n_members: int = 1  # DIENs averaged (`DIENEnsemble`), each trained from its own seed: seed, seed + 1, ...
    seed: int = 42

    def __post_init__(self) -> None:
        if self.loss not in ("softmax", "logloss"):
            raise ValueError(f"loss must be 'softmax' or 'logloss', got {self.loss!r}")
        if self.n_popular_negatives + self.n_hard_negatives < 1:
            raise ValueError("DIEN needs at least one negative per positive")
        if not 0.0 <= self.holdout_fraction <= 1.0:
            raise ValueError(f"holdout_fraction must be in [0, 1], got {self.holdout_fraction}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.n_members < 1:
            raise ValueError(f"n_members must be at least 1, got {self.n_members}")
        if self.holdout_folds < 1 or (self.holdout_fraction == 1.0 and self.holdout_folds == 1):
            raise ValueError(f"holdout_folds must be at least 1 (2 when holdout_fraction is 1), "
                             f"got {self.holdout_folds}")
        if self.retriever_warm_start_epochs and not (self.holdout_fraction and self.holdout_folds == 1
                                                     and self.retriever == "gru4rec"):
            raise ValueError("retriever_warm_start_epochs continues the one fold retriever of stacking: it needs "
                             "holdout_fraction > 0, holdout_folds = 1 and retriever = 'gru4rec'")

    def model_config(self, n_items: int, n_categories: int = 0) -> DIENConfig:
        return DIENConfig(n_items=n_items, n_categories=n_categories, item_dim=self.item_dim,
                          category_dim=self.category_dim, max_len=self.max_len, mlp=tuple(self.mlp),
                          activation=self.activation)

    def to_dict(self) -> dict:
        return asdict(self)


def target_loss(logits: torch.Tensor, loss: str) -> torch.Tensor:
    """Summed loss of logits [b, 1 + negatives] whose column 0 is the positive."""
    if loss == "softmax":
        return F.cross_entropy(logits, logits.new_zeros(len(logits), dtype=torch.int64), reduction="sum")
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1.0
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")


class NegativeSampler:
    """Per-sample negatives: popularity draws, and picks from the retriever's top-N without the target."""

    def __init__(self, popularity: np.ndarray, params: DIENTraining, retrieved: Retrieval | None):
        self.params = params
        self.retrieved = retrieved
        most = params.batch_size * max(params.n_popular_negatives, params.n_hard_negatives, params.max_len)
        self.popular = PopularitySampler(popularity, most, params.sample_alpha, seed=params.seed)
        self.rng = np.random.default_rng(params.seed + 1)

    def _popular(self, *shape: int) -> torch.Tensor:
        return self.popular.draw()[: int(np.prod(shape))].reshape(shape)

    def candidates(self, index: np.ndarray, targets: torch.Tensor) -> torch.Tensor:
        """[b, 1 + negatives]: the positive in column 0."""
        b, p = len(index), self.params
        columns = [targets.unsqueeze(1), self._popular(b, p.n_popular_negatives)]
        if p.n_hard_negatives and self.retrieved is not None:
            top = self.retrieved.top[index]
            picks = torch.from_numpy(np.take_along_axis(
                top, self.rng.integers(0, top.shape[1], size=(b, p.n_hard_negatives)), axis=1).astype(np.int64))
            # the target itself is no negative: a pick that hit it becomes a popularity draw instead
            columns.append(torch.where(picks == targets.unsqueeze(1), self._popular(b, p.n_hard_negatives), picks))
        return torch.cat(columns, dim=1)

    def auxiliary(self, b: int, length: int) -> torch.Tensor:
        return self._popular(b, length)


def fit_prior_weight(retrieved: Retrieval, targets: np.ndarray, most: int = 20_000) -> float:
    """The w that minimises the softmax cross-entropy of w·(retriever scores) over each top-N whose target is in
    it (at most `most` of them): a grid over four decades, fine enough for a starting point."""
    columns = retrieved.target_columns(targets)
    inside = np.flatnonzero(columns >= 0)[:most]
    if not len(inside):
        return 1.0
    scores = torch.from_numpy(retrieved.top_scores[inside])
    target_column = torch.from_numpy(columns[inside])
    grid = np.geomspace(0.1, 1000.0, 41)
    losses = [F.cross_entropy(float(w) * scores, target_column).item() for w in grid]
    return float(grid[int(np.argmin(losses))])


def train_dien(sessions: Sessions, popularity: np.ndarray, params: DIENTraining, retrieved: Retrieval | None,
               item_categories: np.ndarray | None = None, progress: bool = True,
               on_epoch: EpochCallback | None = None, device: torch.device = CPU,
               warm: DIEN | DIENEnsemble | None = None) -> tuple[DIEN | DIENEnsemble, TrainingHistory]:
    """`retrieved`: the retriever's top-N for each training prefix (`evaluate.retrieve` on `sessions`), or
    None for popularity negatives only (not `residual`). One DIEN, or with `n_members` > 1 their ensemble,
    the members' epochs one after another in the history (`on_epoch` sees each member's epochs, the member alone).
    `warm`: each member continues from a copy of that one's weights and prior weight (a fresh Adam), for
    `params.n_epochs` more (continuous training)."""
    if params.residual and retrieved is None:
        raise ValueError("a residual re-ranker trains on the retriever's scores: pass `retrieved`")
    starts = [None] * params.n_members
    if warm is not None:
        starts = list(warm.members) if isinstance(warm, DIENEnsemble) else [warm]
        params = replace(params, n_members=len(starts))
    history = TrainingHistory()
    members = []
    for member, start in enumerate(starts):
        if params.n_members > 1:
            print(f"member {member + 1}/{params.n_members} (seed {params.seed + member})", flush=True)
        members.append(_train_member(sessions, popularity, replace(params, seed=params.seed + member), retrieved,
                                     item_categories, history, first_epoch=member * params.n_epochs,
                                     progress=progress, on_epoch=on_epoch, device=device, warm=start))
    return (members[0] if params.n_members == 1 else DIENEnsemble(members)), history


def _train_member(sessions: Sessions, popularity: np.ndarray, params: DIENTraining, retrieved: Retrieval | None,
                  item_categories: np.ndarray | None, history: TrainingHistory, first_epoch: int,
                  progress: bool, device: torch.device, on_epoch: EpochCallback | None = None,
                  warm: DIEN | None = None) -> DIEN:
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    categories = None if item_categories is None else torch.as_tensor(item_categories)
    n_categories = 0 if categories is None else int(categories.max()) + 1
    model = (copy.deepcopy(warm) if warm is not None
             else DIEN(params.model_config(len(popularity), n_categories), categories)).to(device)
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
    prefixes = Prefixes.of(sessions, params.max_len)
    if retrieved is not None and len(retrieved.ranks) != len(prefixes):
        raise ValueError(f"retrieved has {len(retrieved.ranks)} rows for {len(prefixes)} training prefixes")
    samples = np.arange(len(prefixes))
    if params.residual:
        samples = samples[retrieved.target_columns(prefixes.targets) >= 0]
        if warm is None:
            with torch.no_grad():
                model.prior_weight.fill_(fit_prior_weight(retrieved, prefixes.targets))
    negatives = NegativeSampler(popularity, params, retrieved)
    # the hard negatives are a uniform sample of k of the top-N's other N − 1 items: each stands for
    # (N − 1) / k of them in the softmax (the sampled-softmax log-Q correction)
    hard_sample_correction = 0.0
    if retrieved is not None and params.n_hard_negatives:
        hard_sample_correction = float(np.log((retrieved.top.shape[1] - 1) / params.n_hard_negatives))
    total_epochs = params.n_members * params.n_epochs
    for epoch in range(first_epoch + 1, first_epoch + params.n_epochs + 1):
        meter = EpochProgress(history, epoch, total_epochs, len(samples), params.batch_size, show=progress)
        order = rng.permutation(samples)
        for first in range(0, len(order), params.batch_size):
            index = order[first:first + params.batch_size]
            batch = prefixes.batch(index)
            b = len(index)
            candidates = negatives.candidates(index, batch.targets)
            embedded, states, mask = model.extract(batch.items.to(device), batch.lengths.to(device))
            logits = model.score(embedded, states, mask, model.embed(candidates.to(device)))
            if params.residual:
                prior = torch.from_numpy(retrieved.prior(index, candidates.numpy())).to(device)
                logits = logits + model.prior_weight * prior
                logits[:, 1 + params.n_popular_negatives:] += hard_sample_correction
            loss = target_loss(logits, params.loss)
            if params.aux_weight:
                aux_negatives = negatives.auxiliary(b, batch.items.shape[1]).to(device)
                aux = model.auxiliary_loss(embedded, states, mask, aux_negatives)
                loss = loss + params.aux_weight * aux
            loss = loss / b
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            meter.step(loss.item() * b, b)
        meter.finish()
        if on_epoch is not None:
            model.eval()
            on_epoch(epoch, model)
            model.train()
    model.eval()
    return model
