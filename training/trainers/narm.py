"""Training NARM: shuffled mini-batches of session prefixes, Adam with a step-decayed learning rate.

Every prefix of every training session (its last L clicks) predicts the click after it (`training.data.prefixes`).
Two ways to score a mini-batch:
- `full_softmax` (the paper's): cross-entropy of a softmax over the whole catalogue, [b, n_items] scores
  per step, affordable while n_items is in the tens of thousands (Diginetica's 43k, YOOCHOOSE's 37k);
- otherwise GRU4Rec's losses (`training.trainers.losses`, unchanged) over the candidates [the batch's targets +
  `n_sample` items drawn ∝ popularity^sample_alpha, shared by the batch], column j < b being row j's target.
Each step's summed loss is divided by the step's batch size (the official code's mean).

Optimiser: Adam, lr 1e-3 and batch 512 as in the paper. With the full softmax the item table's gradient is
dense anyway and one Adam updates everything; with sampled candidates a step touches only its inputs' and
candidates' rows, so the table gets sparse gradients and torch's SparseAdam ("lazy" Adam: a row's moments
move only when the row is used), the rest plain Adam; a dense Adam step over the whole table cost more
than the model's forward and backward together. The official Theano code keeps the learning rate
constant; the defaults here decay it by 0.1 every 3 epochs (the schedule of the common PyTorch ports and
of SR-GNN), set `lr_decay=1` for the official behaviour.

On a GPU (`device`) the model, Adam's state, the popularity table and the pre-drawn samples live there; each
shuffled mini-batch of prefixes is gathered on the host and copied over (a few kB).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveInt

from models.narm import NARM, NARMConfig
from training.data.click_log import Sessions
from training.data.prefixes import Prefixes
from training.progress import EpochCallback, EpochProgress, TrainingHistory
from training.trainers.device import CPU
from training.trainers.losses import LossConfig, make_loss
from training.trainers.params import Dropout, TrainingParams
from training.trainers.sampling import PopularitySampler, sampled_candidates
from training.trainers.warm_state import adam_state, load_adam_state


@dataclass(frozen=True)
class NARMTraining(TrainingParams):
    """Hyper-parameters; the defaults are the paper's (full-catalogue softmax cross-entropy)."""

    embedding_dim: PositiveInt = 50
    hidden_size: PositiveInt = 100
    max_len: PositiveInt = 19
    dropout_embed: Dropout = 0.25
    dropout_context: Dropout = 0.5
    batch_size: PositiveInt = 512
    learning_rate: NonNegativeFloat = 1e-3
    lr_decay: Annotated[float, Field(gt=0, le=1)] = 0.1  # multiply the learning rate by this ...
    lr_decay_every: PositiveInt = 3  # ... every this many epochs
    full_softmax: bool = True  # the paper's loss; False: `loss` over sampled candidates
    loss: str = "cross-entropy"

    def __post_init__(self) -> None:
        if self.full_softmax and self.loss != "cross-entropy":
            raise ValueError(f"full_softmax is a softmax cross-entropy; loss={self.loss!r} needs full_softmax=False")
        LossConfig(name=self.loss)  # validates the name

    def model_config(self, n_items: int) -> NARMConfig:
        return NARMConfig(n_items=n_items, embedding_dim=self.embedding_dim, hidden_size=self.hidden_size,
                          max_len=self.max_len, dropout_embed=self.dropout_embed,
                          dropout_context=self.dropout_context, sparse_item_gradients=not self.full_softmax)



def train_narm(sessions: Sessions, popularity: np.ndarray, params: NARMTraining, progress: bool = True,
               on_epoch: EpochCallback | None = None, device: torch.device = CPU,
               warm: NARM | None = None, warm_optimiser: dict | None = None) -> tuple[NARM, TrainingHistory]:
    """`warm`, `warm_optimiser`: continue this model and the optimiser's state it was left with (an incremental
    update, `training.trainers.warm_state`) instead of a freshly initialised one."""
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    if warm is not None and warm.config.n_items != len(popularity):
        raise ValueError(f"the warm model has {warm.config.n_items} items, the popularity {len(popularity)}")
    model = (warm or NARM(params.model_config(len(popularity)))).to(device)
    model.train()
    if model.config.sparse_item_gradients:
        rest = [p for name, p in model.named_parameters() if name != "item_embedding"]
        optimisers = [torch.optim.SparseAdam([model.item_embedding], lr=params.learning_rate),
                      torch.optim.Adam(rest, lr=params.learning_rate)]
    else:
        optimisers = [torch.optim.Adam(model.parameters(), lr=params.learning_rate)]
    if warm_optimiser is not None:
        load_adam_state(model, optimisers, warm_optimiser)
    schedules = [torch.optim.lr_scheduler.StepLR(o, step_size=params.lr_decay_every, gamma=params.lr_decay)
                 for o in optimisers]
    loss_fn = make_loss(params.loss_config())
    sampler = None
    if not params.full_softmax and params.n_sample > 0:
        sampler = PopularitySampler(popularity, params.n_sample, params.sample_alpha, seed=params.seed,
                                    device=device)
    log_popularity = torch.log(torch.as_tensor(popularity, dtype=torch.float32).clamp_min(1.0)).to(device)

    prefixes = Prefixes.of(sessions, params.max_len)
    n_events = len(prefixes)
    history = TrainingHistory()
    for epoch in range(1, params.n_epochs + 1):
        meter = EpochProgress(history, epoch, params.n_epochs, n_events, params.batch_size, show=progress)
        for batch in prefixes.batches(params.batch_size, rng):
            batch = batch.to(device)
            batch_events = len(batch.targets)
            if params.full_softmax:
                scores = model(batch.items, batch.lengths)
                loss = F.cross_entropy(scores, batch.targets, reduction="sum") / batch_events
            else:
                if sampler is None and batch_events < 2:
                    continue  # in-batch negatives only: a single prefix has nothing to rank against
                candidates, log_sampling_prob = sampled_candidates(batch.targets, sampler, log_popularity,
                                                                   params.logq, params.sample_alpha)
                scores = model.score_candidates(batch.items, batch.lengths, candidates)
                loss = loss_fn(scores, log_sampling_prob) / batch_events
            for optimiser in optimisers:
                optimiser.zero_grad(set_to_none=True)
            loss.backward()
            for optimiser in optimisers:
                optimiser.step()
            meter.step(loss.item() * batch_events, batch_events)
        meter.finish()
        for schedule in schedules:
            schedule.step()
        if on_epoch is not None:
            model.eval()
            on_epoch(epoch, model)
            model.train()
    history.optimiser_state = adam_state(model, optimisers, {"item_embedding"})
    model.eval()
    return model, history
