"""Training GRU4Rec: session-parallel mini-batches, sampled negatives, Adagrad with momentum."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from models.gru4rec import GRU4Rec, GRU4RecConfig
from training.data import Sessions
from training.losses import LossConfig, make_loss
from training.optim import AdagradMomentum
from training.sampling import PopularitySampler
from training.session_batches import apply_resets, session_parallel_steps


@dataclass(frozen=True)
class GRU4RecTraining:
    """Hyper-parameters; the defaults are the official best settings for Diginetica (bpr-max, shared embedding)."""

    layers: tuple[int, ...] = (512,)
    embedding: int = 0
    constrained_embedding: bool = True
    dropout_embed: float = 0.5
    dropout_hidden: float = 0.3
    batch_size: int = 128
    learning_rate: float = 0.05
    momentum: float = 0.15
    n_sample: int = 2048
    sample_alpha: float = 0.3
    loss: str = "bpr-max"
    bpreg: float = 0.9
    elu_param: float = 1.0
    logq: float = 0.0
    n_epochs: int = 10
    seed: int = 42

    def model_config(self, n_items: int) -> GRU4RecConfig:
        return GRU4RecConfig(n_items=n_items, layers=tuple(self.layers), embedding=self.embedding,
                             constrained_embedding=self.constrained_embedding,
                             dropout_embed=self.dropout_embed, dropout_hidden=self.dropout_hidden)

    def loss_config(self) -> LossConfig:
        return LossConfig(name=self.loss, bpreg=self.bpreg, elu_param=self.elu_param, logq=self.logq)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EpochStats:
    epoch: int
    loss: float
    seconds: float
    events: int

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds


@dataclass
class TrainingHistory:
    epochs: list[EpochStats] = field(default_factory=list)
    curve_events: list[int] = field(default_factory=list)  # events seen so far, at each curve point
    curve_loss: list[float] = field(default_factory=list)  # mean loss per event since the previous point


class TrainingDiverged(RuntimeError):
    pass


def train_gru4rec(sessions: Sessions, popularity: np.ndarray, params: GRU4RecTraining,
                  progress: bool = True) -> tuple[GRU4Rec, TrainingHistory]:
    torch.manual_seed(params.seed)
    model = GRU4Rec(params.model_config(len(popularity)))
    model.train()
    tables = [model.output_weights, model.output_bias]
    if model.input_embedding is not None:
        tables.append(model.input_embedding)
    dense = [p for p in model.parameters() if all(p is not t for t in tables)]
    optimiser = AdagradMomentum(dense, tables, lr=params.learning_rate, momentum=params.momentum)
    loss_fn = make_loss(params.loss_config())
    sampler = None
    if params.n_sample > 0:
        sampler = PopularitySampler(popularity, params.n_sample, params.sample_alpha, seed=params.seed)
    log_popularity = torch.log(torch.as_tensor(popularity, dtype=torch.float32).clamp_min(1.0))

    history = TrainingHistory()
    n_events = int(sessions.n_clicks - sessions.n_sessions)
    curve_every = max(1, n_events // params.batch_size // 50)  # about 50 curve points per epoch
    for epoch in range(1, params.n_epochs + 1):
        hidden = model.initial_hidden(params.batch_size)
        epoch_loss, epoch_events, window_loss, window_events = 0.0, 0, 0.0, 0
        started = time.perf_counter()
        bar = tqdm(total=n_events, desc=f"epoch {epoch}/{params.n_epochs}", unit="ev", disable=not progress,
                   smoothing=0.05)
        for n_step, step in enumerate(session_parallel_steps(sessions, params.batch_size)):
            hidden = apply_resets(hidden, step)
            if sampler is None and len(step.items) < 2:
                break  # in-batch negatives only: a single session has nothing to rank against
            negatives = sampler.draw() if sampler is not None else step.targets[:0]
            candidates = torch.cat([step.targets, negatives])
            log_sampling_prob = None
            if params.logq > 0:
                log_sampling_prob = torch.cat([log_popularity[step.targets],
                                               params.sample_alpha * log_popularity[negatives]])
            rows = model.gather_rows(step.items, candidates)
            optimiser.zero_grad()
            scores, hidden = model.score_candidates(rows, hidden)
            loss = loss_fn(scores, log_sampling_prob) / params.batch_size
            loss.backward()
            optimiser.step_dense()
            for table, ids, grad in model.row_updates(rows):
                optimiser.step_rows(table, ids, grad)
            hidden = [h.detach() for h in hidden]

            batch_events = len(step.items)
            step_loss = loss.item() * params.batch_size  # summed over this step's events
            if not np.isfinite(step_loss):
                raise TrainingDiverged(f"loss became {step_loss} in epoch {epoch}, step {n_step}: "
                                       "lower the learning rate or check the data")
            epoch_loss += step_loss
            epoch_events += batch_events
            window_loss += step_loss
            window_events += batch_events
            if (n_step + 1) % curve_every == 0:
                history.curve_events.append((epoch - 1) * n_events + epoch_events)
                history.curve_loss.append(window_loss / window_events)
                window_loss, window_events = 0.0, 0
                bar.set_postfix(loss=f"{epoch_loss / epoch_events:.4f}")
            bar.update(batch_events)
        bar.close()
        stats = EpochStats(epoch, epoch_loss / max(epoch_events, 1), time.perf_counter() - started, epoch_events)
        history.epochs.append(stats)
        if progress:
            print(f"epoch {epoch}: loss {stats.loss:.4f}  {stats.seconds:.1f} s  {stats.events_per_second:,.0f} events/s")
    model.eval()
    return model, history
