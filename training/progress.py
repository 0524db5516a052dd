"""What a long run reports: per epoch a progress bar, the loss curve and a stop on divergence; per stage its
wall time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

if TYPE_CHECKING:
    import torch

CURVE_POINTS_PER_EPOCH = 50
LINE_LABEL = ""  # put before each epoch and stage line: which model, where training lanes interleave their output

# Called by a trainer after each epoch with the epoch's number and the model (in eval mode; the trainer puts it back
# into training mode): a hyper-parameter search scores the model on its validation split there and may stop the
# training by raising (`training.tuning.search`: optuna's TrialPruned).
EpochCallback = Callable[[int, "torch.nn.Module"], None]


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
    optimiser_state: dict | None = None  # where the optimiser ended (`training.trainers.warm_state`)
    matmul_precision: str = "float32"  # what the products ran in: a config's bfloat16 where the device has it


class TrainingDiverged(RuntimeError):
    pass


class EpochProgress:
    """One epoch's bookkeeping: `step` after each mini-batch, `finish` at the end."""

    def __init__(self, history: TrainingHistory, epoch: int, n_epochs: int, events_per_epoch: int,
                 batch_size: int, show: bool):
        self.history, self.epoch, self.events_per_epoch = history, epoch, events_per_epoch
        self.curve_every = max(1, events_per_epoch // batch_size // CURVE_POINTS_PER_EPOCH)
        self.loss = self.window_loss = 0.0
        self.events = self.window_events = self.steps = 0
        self.events_before = sum(e.events for e in history.epochs)  # a continued training's earlier epochs
        self.started = time.perf_counter()
        self.bar = tqdm(total=events_per_epoch, desc=f"epoch {epoch}/{n_epochs}", unit="ev", disable=not show,
                        smoothing=0.05)

    def step(self, summed_loss: float, events: int) -> None:
        """Record one mini-batch: its loss summed over its `events`."""
        if not np.isfinite(summed_loss):
            self.bar.close()
            raise TrainingDiverged(f"loss became {summed_loss} in epoch {self.epoch}, step {self.steps}: "
                                   "lower the learning rate or check the data")
        self.steps += 1
        self.loss += summed_loss
        self.events += events
        self.window_loss += summed_loss
        self.window_events += events
        if self.steps % self.curve_every == 0:
            self.history.curve_events.append(self.events_before + self.events)
            self.history.curve_loss.append(self.window_loss / self.window_events)
            self.window_loss, self.window_events = 0.0, 0
            self.bar.set_postfix(loss=f"{self.loss / self.events:.4f}")
        self.bar.update(events)

    def finish(self) -> EpochStats:
        self.bar.close()
        stats = EpochStats(self.epoch, self.loss / max(self.events, 1), time.perf_counter() - self.started,
                           self.events)
        self.history.epochs.append(stats)
        # one line per epoch even without the bar: what a log of a long unattended run needs
        print(f"{LINE_LABEL}epoch {stats.epoch}: loss {stats.loss:.4f}  {stats.seconds:.1f} s  "
              f"{stats.events_per_second:,.0f} events/s", flush=True)
        return stats


class StageClock:
    """Wall seconds of each stage of a run (loading, training, retrieval, evaluation, export), printed as it
    ends and kept for the run's metrics: where the hour of a full retrain goes, epochs aside."""

    def __init__(self) -> None:
        self.stages: list[dict] = []  # {"name", "seconds"} in the order the stages ended

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.stages.append({"name": name, "seconds": time.perf_counter() - started})
        print(f"{LINE_LABEL}[{name}: {self.stages[-1]['seconds']:,.1f} s]", flush=True)
