"""The hyper-parameter ranges `python -m training.retrain --tune N` searches, per model and baseline.

GRU4Rec: the official search spaces, hidasib/GRU4Rec_PyTorch_Official
`paramspaces/gru4rec_bprmax_standard_parspace.json` and `paramspaces/gru4rec_xe_standard_parspace.json` (read by its
`paropt.py`; names as here: its dropout_p_embed / dropout_p_hidden are dropout_embed / dropout_hidden). Both share
layers 64..512 step 32 (one layer), batch_size 32..256 step 16, learning_rate 0.01..0.25 step 0.005, dropout_embed
0..0.5 step 0.05, dropout_hidden 0..0.7 step 0.05, momentum 0..0.9 step 0.05, sample_alpha 0..1 step 0.1; the
bpr-max space adds bpreg 0..2 step 0.05 and elu_param in {0.5, 1, 0}. The official README advises one search per
loss; here the loss is one more choice and each loss's own parameters are searched only under it (optuna's
define-by-run), with the README's fixed setting for cross-entropy, logq = 1 ("has no effect when the BPR-max loss is
used"). Fixed, as the README's fixed parameters: the embedding mode (shared, `constrained_embedding`), n_sample and
n_epochs, which come from the defaults, the config file and the flags like every other setting.

NARM, DIEN and the baselines have no published search spaces; these are ranges around their papers' and
session-rec's defaults (ours, not published): NARM's widths, dropouts, learning rate and batch; DIEN's item width,
learning rate, negatives and auxiliary-loss weight; the neighbourhood sizes and decays of the baselines.

A setting given as a `--<model>-<name>` flag is fixed: it is not searched (the official `paropt.py -fp`).
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna


@dataclass(frozen=True)
class Range:
    """A number between `low` and `high` (ints when both are ints and no `log`), on a grid of `step`."""

    name: str
    low: float
    high: float
    step: float | None = None
    log: bool = False
    when: tuple[str, object] | None = None  # searched only where this other setting has this value
    as_layers: bool = False  # the value is one GRU layer's width: layers = (value,)

    def suggest(self, trial: optuna.Trial) -> object:
        if isinstance(self.low, int) and isinstance(self.high, int) and not self.log:
            value = trial.suggest_int(self.name, self.low, self.high, step=int(self.step or 1))
        else:
            value = trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)
            if self.step:
                value = round(value, 10)  # optuna's grid gives 0.30000000000000004: the setting is 0.3
        return (value,) if self.as_layers else value

    def holds(self, value: object) -> bool:
        """Whether a suggestion could give `value` (a one-layer tuple where `as_layers`)."""
        if self.as_layers:
            if not (isinstance(value, tuple) and len(value) == 1):
                return False
            value = value[0]
        if not isinstance(value, int | float) or isinstance(value, bool) or not self.low <= value <= self.high:
            return False
        on_grid = not self.step or abs((k := (value - self.low) / self.step) - round(k)) < 1e-9
        return on_grid and (isinstance(value, int) or not isinstance(self.low, int) or self.log)

    def describe(self) -> str:
        grid = f" step {self.step}" if self.step else ""
        return f"{self.name}: {self.low}..{self.high}{grid}{' log' if self.log else ''}{_when(self.when)}"


@dataclass(frozen=True)
class Choice:
    name: str
    choices: tuple
    when: tuple[str, object] | None = None

    def suggest(self, trial: optuna.Trial) -> object:
        return trial.suggest_categorical(self.name, self.choices)

    def holds(self, value: object) -> bool:
        return value in self.choices

    def describe(self) -> str:
        return f"{self.name}: one of {list(self.choices)}{_when(self.when)}"


@dataclass(frozen=True)
class Fixed:
    """A setting that goes with another's value (cross-entropy's logq = 1), not searched."""

    name: str
    value: object
    when: tuple[str, object] | None = None

    def suggest(self, trial: optuna.Trial) -> object:
        return self.value

    def describe(self) -> str:
        return f"{self.name} = {self.value}{_when(self.when)}"


def _when(when: tuple[str, object] | None) -> str:
    return f" (when {when[0]} = {when[1]})" if when else ""


Parameter = Range | Choice | Fixed

_OFFICIAL_GRU4REC = [
    Choice("loss", ("bpr-max", "cross-entropy")),
    Range("layers", 64, 512, 32, as_layers=True),
    Range("batch_size", 32, 256, 16),
    Range("learning_rate", 0.01, 0.25, 0.005),
    Range("dropout_embed", 0.0, 0.5, 0.05),
    Range("dropout_hidden", 0.0, 0.7, 0.05),
    Range("momentum", 0.0, 0.9, 0.05),
    Range("sample_alpha", 0.0, 1.0, 0.1),
    Range("bpreg", 0.0, 2.0, 0.05, when=("loss", "bpr-max")),
    Choice("elu_param", (0.5, 1.0, 0.0), when=("loss", "bpr-max")),
    Fixed("logq", 1.0, when=("loss", "cross-entropy")),
]

SEARCH_SPACES: dict[str, list[Parameter]] = {
    "gru4rec": _OFFICIAL_GRU4REC,
    "narm": [
        Range("embedding_dim", 32, 256, 16),
        Range("hidden_size", 32, 256, 16),
        Range("batch_size", 64, 512, 64),
        Range("learning_rate", 1e-4, 1e-2, log=True),
        Range("dropout_embed", 0.0, 0.5, 0.05),
        Range("dropout_context", 0.0, 0.7, 0.05),
    ],
    "dien": [
        Range("item_dim", 16, 128, 16),
        Range("learning_rate", 1e-4, 1e-2, log=True),
        Range("n_hard_negatives", 4, 32, 4),
        Range("n_popular_negatives", 0, 8, 1),
        Range("aux_weight", 0.0, 1.0, 0.1),
    ],
    "item_knn": [
        Range("n_sims", 20, 500, 20),
        Range("lam", 0.0, 100.0, 5.0),
        Range("alpha", 0.0, 1.0, 0.05),
    ],
    "vsknn": [
        Range("k", 50, 500, 50),
        Range("sample_size", 500, 10_000, 500),
        Choice("idf_weighting", (0.0, 1.0, 2.0, 5.0, 10.0)),
    ],
    "stan": [
        Range("k", 50, 500, 50),
        Range("sample_size", 1000, 10_000, 1000),
        # up to 16 clicks: session-rec's Diginetica grid reaches 9.8 (twice the mean session length), its tuned λ3
        Range("lambda_position", 0.25, 16.0, log=True),
        Range("lambda_item", 0.25, 16.0, log=True),
        # the time decay in seconds where the training log has timestamps (1 hour .. 60 days), else in sessions
        Range("lambda_time", 3600.0, 60 * 86_400.0, log=True, when=("timestamps", True)),
        Range("lambda_time_sessions", 1e3, 1e7, log=True, when=("timestamps", False)),
    ],
}


def suggest(trial: optuna.Trial, space: list[Parameter], fixed: set[str], context: dict) -> dict:
    """The trial's settings of `space`, leaving out the `fixed` names; `context` holds the values a `when` reads
    (the base settings, and whether the data has timestamps), updated with each value chosen here."""
    context = dict(context)
    chosen = {}
    for parameter in space:
        if parameter.name in fixed or (parameter.when and context.get(parameter.when[0]) != parameter.when[1]):
            continue
        chosen[parameter.name] = context[parameter.name] = parameter.suggest(trial)
    return chosen


def starting_point(space: list[Parameter], fixed: set[str], context: dict) -> dict | None:
    """The values of `space` that reproduce the base settings in `context` (optuna's params, for
    `Study.enqueue_trial`), or None where one of them lies outside the space (the search then starts from TPE's
    own proposals)."""
    params = {}
    for parameter in space:
        if (parameter.name in fixed or isinstance(parameter, Fixed)
                or (parameter.when and context.get(parameter.when[0]) != parameter.when[1])):
            continue
        value = context.get(parameter.name)
        if not parameter.holds(value):
            return None
        params[parameter.name] = value[0] if getattr(parameter, "as_layers", False) else value
    return params


def describe(space: list[Parameter], fixed: set[str]) -> list[str]:
    return [p.describe() for p in space if p.name not in fixed]


__all__ = ["Choice", "Fixed", "Parameter", "Range", "SEARCH_SPACES", "describe", "starting_point", "suggest"]
