"""What every sampled-loss trainer shares (GRU4Rec's, NARM's): the loss, its sampled negatives, epochs, seed.

Each model's hyper-parameters extend `TrainingParams` in that model's trainer (`GRU4RecTraining` in
`training.trainers.gru4rec`, `NARMTraining` in `training.trainers.narm`); `training.retrain` fills them from
defaults, a TOML config and flags, and checks them against their types' bounds (pydantic). DIEN's
(`DIENTraining`) stand alone: its losses are not these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, ClassVar

from pydantic import Field, NonNegativeFloat, NonNegativeInt

from training.trainers.losses import LOSSES, LossConfig

Dropout = Annotated[float, Field(ge=0, lt=1)]  # a share of units dropped in training


@dataclass(frozen=True)
class TrainingParams:
    """What every trainer shares: the loss (`training.trainers.losses`), its sampled negatives, epochs and seed."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"loss": LOSSES}  # a field's allowed values (flags' choices)

    n_sample: NonNegativeInt = 2048  # popularity-sampled negatives shared by a mini-batch
    sample_alpha: NonNegativeFloat = 0.3  # sampling probability ∝ popularity^alpha
    loss: str = "bpr-max"
    bpreg: NonNegativeFloat = 0.9
    elu_param: NonNegativeFloat = 1.0
    logq: NonNegativeFloat = 0.0
    n_epochs: NonNegativeInt = 10
    seed: int = 42

    def loss_config(self) -> LossConfig:
        return LossConfig(name=self.loss, bpreg=self.bpreg, elu_param=self.elu_param, logq=self.logq)

    def to_dict(self) -> dict:
        return asdict(self)
