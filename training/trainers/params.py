"""What every sampled-loss trainer shares (GRU4Rec's, NARM's): the loss, its sampled negatives, epochs, seed.

Each model's hyper-parameters extend `TrainingParams` in that model's trainer (`GRU4RecTraining` in
`training.trainers.gru4rec`, `NARMTraining` in `training.trainers.narm`); `training.retrain` fills them from
defaults, a TOML config and flags. DIEN's (`DIENTraining`) stand alone: its losses are not these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

from training.trainers.losses import LOSSES, LossConfig


@dataclass(frozen=True)
class TrainingParams:
    """What every trainer shares: the loss (`training.trainers.losses`), its sampled negatives, epochs and seed."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"loss": LOSSES}  # a field's allowed values (flags' choices)

    n_sample: int = 2048  # popularity-sampled negatives shared by a mini-batch
    sample_alpha: float = 0.3  # sampling probability ∝ popularity^alpha
    loss: str = "bpr-max"
    bpreg: float = 0.9
    elu_param: float = 1.0
    logq: float = 0.0
    n_epochs: int = 10
    seed: int = 42

    def loss_config(self) -> LossConfig:
        return LossConfig(name=self.loss, bpreg=self.bpreg, elu_param=self.elu_param, logq=self.logq)

    def to_dict(self) -> dict:
        return asdict(self)
