"""Training GRU4Rec: session-parallel mini-batches, sampled negatives, Adagrad with momentum.

One training step (`GRU4RecTrainer.fit`), file by file; B = batch_size slots, C = B + n_sample candidates:

1. `training.data.session_batches.session_parallel_steps`: each slot's current click x_t and its next click
   (the target) [B]; `apply_resets` drops the slots whose session ran out and zeroes the hidden state of
   those that start a new session.
2. `training.trainers.sampling.sampled_candidates`: candidates = [the B targets, n_sample items drawn ∝
   popularity^sample_alpha by `PopularitySampler.draw`, shared by every row]; for logQ correction also
   log P of each candidate (popularity for targets, popularity^alpha for the samples).
3. `models.gru4rec.GRU4Rec.gather_rows`: the distinct rows of W_y, b_y (and E) that the inputs and
   candidates use, copied out as small dense leaves (`ItemRows`).
4. `GRU4Rec.score_candidates` → `GRU4Rec.step` → `GRU4Rec.gru_step` per layer (in bfloat16 products under
   autocast when `matmul_precision="bfloat16"`):
       h_t = GRU_l(dropout_e(E[x_t]), h_{t-1}), each layer's output dropped out with p_h
       R = h_t · W_y[C]ᵀ + b_y[C]                   [B, C], row i's target in column i
5. `training.trainers.losses.make_loss` (`TrainingParams.loss_config`): the summed loss over rows, e.g. bpr-max
       −log Σ_j s_j σ(r_t − r_j) + λ Σ_j s_j r_j²   (s = softmax over row i's negatives, scores through ELU),
   divided by batch_size (the official code's mean: a short last batch weighs less); `loss.backward()`.
6. `training.trainers.optim.AdagradMomentum`: `step_dense` for the GRU weights, then `step_rows` for the rows
   `GRU4Rec.row_updates` lists (the ones the step used), every other row untouched:
       a ← a + g²    m ← μ·m − η·g / sqrt(a + ε)    θ ← θ + m
7. The hidden state is detached (no backpropagation through time) and `training.progress.EpochProgress`
   adds the step's loss to the epoch's line and curve.

On a GPU (`device`) the model, the optimiser's state, the popularity table and the pre-drawn samples live
there, and each epoch's session-parallel steps are copied there at once; the weights are the same on the CPU
as before a device existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveInt

from models.gru4rec import GRU4Rec, GRU4RecConfig
from training.data.click_log import Sessions
from training.data.session_batches import apply_resets, session_parallel_steps
from training.progress import EpochCallback, EpochProgress, TrainingHistory
from training.trainers.device import CPU, bfloat16_autocast, bfloat16_matmuls, rng_state, set_rng_state
from training.trainers.losses import make_loss
from training.trainers.optim import AdagradMomentum
from training.trainers.params import Dropout, TrainingParams
from training.trainers.sampling import PopularitySampler, sampled_candidates
from training.trainers.warm_state import adagrad_state, load_adagrad_state


@dataclass(frozen=True)
class GRU4RecTraining(TrainingParams):
    """Hyper-parameters; the defaults are the official best settings for Diginetica (bpr-max, shared embedding)."""

    layers: tuple[PositiveInt, ...] = (512,)  # hidden units of each GRU layer
    embedding: NonNegativeInt = 0
    constrained_embedding: bool = True
    dropout_embed: Dropout = 0.5
    dropout_hidden: Dropout = 0.3
    batch_size: PositiveInt = 128
    learning_rate: NonNegativeFloat = 0.05
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.15
    # "bfloat16": the training step's matrix products take bfloat16 inputs (float32 accumulation; weights,
    # optimiser state, gates, recurrent state and loss stay float32): faster GEMMs on CPUs with AVX512-BF16 or
    # AMX (docs/experiments.md), emulated and slower elsewhere; on a CUDA GPU its bfloat16 GEMMs (float32
    # accumulation), float32 on one without bfloat16. Evaluation and the exported graph are float32.
    matmul_precision: str = "float32"

    CHOICES = TrainingParams.CHOICES | {"matmul_precision": ("float32", "bfloat16")}

    def __post_init__(self) -> None:
        if self.matmul_precision not in self.CHOICES["matmul_precision"]:
            raise ValueError(f"matmul_precision must be 'float32' or 'bfloat16', got {self.matmul_precision!r}")

    def model_config(self, n_items: int) -> GRU4RecConfig:
        return GRU4RecConfig(n_items=n_items, layers=tuple(self.layers), embedding=self.embedding,
                             constrained_embedding=self.constrained_embedding,
                             dropout_embed=self.dropout_embed, dropout_hidden=self.dropout_hidden)


class GRU4RecTrainer:
    """A GRU4Rec with the state of its training (optimiser accumulators, sample stream, dropout RNG), so that
    `fit` can go on training it: a model trained on some sessions continues on more, as the retrain's
    serving retriever continues the fold retriever of DIEN's stacking (`DIENTraining.retriever_warm_start_epochs`)."""

    def __init__(self, popularity: np.ndarray, params: GRU4RecTraining, device: torch.device = CPU,
                 warm: GRU4Rec | None = None, warm_optimiser: dict | None = None):
        """`warm`, `warm_optimiser`: continue this model and the optimiser's state it was left with (an incremental
        update, `training.trainers.warm_state`) instead of starting afresh."""
        torch.manual_seed(params.seed)
        self.params, self.device = params, device
        if warm is not None and warm.config.n_items != len(popularity):
            raise ValueError(f"the warm model has {warm.config.n_items} items, the popularity {len(popularity)}")
        self.model = (warm or GRU4Rec(params.model_config(len(popularity)))).to(device)
        model = self.model
        tables = [model.output_weights, model.output_bias]
        if model.input_embedding is not None:
            tables.append(model.input_embedding)
        dense = [p for p in model.parameters() if all(p is not t for t in tables)]
        self.optimiser = AdagradMomentum(dense, tables, lr=params.learning_rate, momentum=params.momentum)
        if warm_optimiser is not None:
            load_adagrad_state(model, self.optimiser.accumulators(), warm_optimiser)
        self.loss_fn = make_loss(params.loss_config())
        self.sampler = None
        if params.n_sample > 0:
            self.sampler = PopularitySampler(popularity, params.n_sample, params.sample_alpha, seed=params.seed,
                                             device=device)
        self.log_popularity = torch.log(torch.as_tensor(popularity, dtype=torch.float32).clamp_min(1.0)).to(device)
        self.rng_state = rng_state(device)  # dropout's stream, this training's own across `fit` calls
        self.bfloat16 = bfloat16_matmuls(device, params.matmul_precision == "bfloat16")
        self.history = TrainingHistory(matmul_precision="bfloat16" if self.bfloat16 else "float32")

    def fit(self, sessions: Sessions, n_epochs: int, progress: bool = True,
            on_epoch: EpochCallback | None = None) -> GRU4Rec:
        """Train `n_epochs` more epochs on `sessions`; the model comes back in eval mode."""
        params, model, optimiser, sampler = self.params, self.model, self.optimiser, self.sampler
        set_rng_state(self.device, self.rng_state)
        model.train()
        n_events = int(sessions.n_clicks - sessions.n_sessions)
        first = len(self.history.epochs) + 1
        for epoch in range(first, first + n_epochs):
            hidden = model.initial_hidden(params.batch_size)
            meter = EpochProgress(self.history, epoch, first + n_epochs - 1, n_events, params.batch_size,
                                  show=progress)
            for step in session_parallel_steps(sessions, params.batch_size, self.device):
                hidden = apply_resets(hidden, step)
                if sampler is None and len(step.items) < 2:
                    break  # in-batch negatives only: a single session has nothing to rank against
                candidates, log_sampling_prob = sampled_candidates(step.targets, sampler, self.log_popularity,
                                                                   params.logq, params.sample_alpha)
                rows = model.gather_rows(step.items, candidates)
                optimiser.zero_grad()
                with bfloat16_autocast(self.device, self.bfloat16):
                    scores, hidden = model.score_candidates(rows, hidden)
                loss = self.loss_fn(scores, log_sampling_prob) / params.batch_size
                loss.backward()
                optimiser.step_dense()
                for table, ids, grad in model.row_updates(rows):
                    optimiser.step_rows(table, ids, grad)
                hidden = [h.detach() for h in hidden]
                meter.step(loss.item() * params.batch_size, len(step.items))
            meter.finish()
            if on_epoch is not None:
                model.eval()
                on_epoch(epoch, model)
                model.train()
        self.rng_state = rng_state(self.device)
        self.history.optimiser_state = adagrad_state(model, self.optimiser.accumulators(),
                                                     {id(t) for t in self.optimiser.tables}, params.learning_rate)
        model.eval()
        return model


def train_gru4rec(sessions: Sessions, popularity: np.ndarray, params: GRU4RecTraining, progress: bool = True,
                  on_epoch: EpochCallback | None = None, device: torch.device = CPU) -> tuple[GRU4Rec, TrainingHistory]:
    trainer = GRU4RecTrainer(popularity, params, device)
    return trainer.fit(sessions, params.n_epochs, progress, on_epoch), trainer.history
