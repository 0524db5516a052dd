"""A trained model as a file that training can continue from, and a model grown by new items.

Serving reads the ONNX graph; a checkpoint (`{name}.pt` in an artifact) keeps what the graph does not: the
model's config, its weights as torch tensors and where its optimiser ended (`training.trainers.warm_state`), so
that an incremental update (`training.incremental`) continues exactly the served model. Loaded with
`torch.load(weights_only=True)`: no code runs.

Growing the catalogue appends rows to a model's item tables and leaves every other weight as it is, so an
old item's score for any session is unchanged until training moves it. A new item's row starts as the mean
of the rows of the known items clicked with it (its co-clicked items), where it has any, else the mean row.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.dien import DIEN, DIENConfig, DIENEnsemble
from models.gru4rec import GRU4Rec, GRU4RecConfig
from models.narm import NARM, NARMConfig

CONFIGS = {"gru4rec": GRU4RecConfig, "narm": NARMConfig, "dien": DIENConfig}
# state-dict names (their last parts) of the tables with one row per item
ITEM_TABLES = {
    "gru4rec": ("output_weights", "output_bias", "input_embedding"),
    "narm": ("item_embedding",),
    "dien": ("item_embedding.weight", "item_categories"),
}


def kind_of(model: nn.Module) -> str:
    for kind, config_type in CONFIGS.items():
        if isinstance(model.config, config_type):
            return kind
    raise TypeError(f"no checkpoint format for {type(model).__name__}")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    model: nn.Module
    optimiser: dict | None  # `training.trainers.warm_state`'s plain dict; None: nothing to continue


def save_checkpoint(model: nn.Module, path: Path, optimiser: dict | None = None) -> Path:
    members = len(model.members) if isinstance(model, DIENEnsemble) else 0
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    torch.save({"kind": kind_of(model), "config": dataclasses.asdict(model.config), "members": members,
                "state_dict": state, "optimiser": optimiser}, path)
    return path


def _config(kind: str, fields: dict) -> typing.Any:
    """The config dataclass from its saved fields (tuples come back from torch.load as lists)."""
    config_type = CONFIGS[kind]
    return config_type(**{name: tuple(value) if isinstance(value, list) else value for name, value in fields.items()})


def _build(kind: str, config: typing.Any, members: int, state: dict[str, torch.Tensor]) -> nn.Module:
    if kind == "gru4rec":
        model: nn.Module = GRU4Rec(config)
    elif kind == "narm":
        model = NARM(config)
    else:
        prefix = "members.0." if members else ""
        categories = state.get(prefix + "item_categories")
        dien = [DIEN(config, categories) for _ in range(max(members, 1))]
        model = DIENEnsemble(dien) if members else dien[0]
    model.load_state_dict(state)
    return model.eval()


def load_checkpoint(path: Path) -> Checkpoint:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    kind = saved["kind"]
    return Checkpoint(_build(kind, _config(kind, saved["config"]), saved["members"], saved["state_dict"]),
                      saved.get("optimiser"))


def is_item_table(kind: str, name: str) -> bool:
    return any(name == table or name.endswith("." + table) for table in ITEM_TABLES[kind])


def grown(checkpoint: Checkpoint, co_clicked: typing.Sequence[np.ndarray]) -> Checkpoint:
    """A copy of `checkpoint` with one more item per entry of `co_clicked` (the known item indices clicked with
    it), appended after the known items: in the model's item tables and in its optimiser's statistics of them."""
    model = checkpoint.model
    kind = kind_of(model)
    n_old, n_new = model.config.n_items, len(co_clicked)

    def extended(name: str, table: torch.Tensor) -> torch.Tensor:
        if not is_item_table(kind, name):
            return table.detach().cpu().clone()
        table = torch.cat([table, _new_rows(table, co_clicked)]) if n_new else table.clone()
        assert len(table) == n_old + n_new, name
        return table.detach().cpu()

    state = {name: extended(name, table) for name, table in model.state_dict().items()}
    members = len(model.members) if isinstance(model, DIENEnsemble) else 0
    config = dataclasses.replace(model.config, n_items=n_old + n_new)
    optimiser = checkpoint.optimiser
    if optimiser is not None:
        optimiser = optimiser | {"squares": {name: extended(name, square)
                                             for name, square in optimiser["squares"].items()}}
    return Checkpoint(_build(kind, config, members, state), optimiser)


def _new_rows(table: torch.Tensor, co_clicked: typing.Sequence[np.ndarray]) -> torch.Tensor:
    if not table.is_floating_point():  # item → category: a new item's category is unknown (0)
        return table.new_zeros((len(co_clicked), *table.shape[1:]))
    mean_row = table.mean(dim=0)
    rows = [table[torch.as_tensor(known, dtype=torch.int64)].mean(dim=0) if len(known) else mean_row
            for known in co_clicked]
    return torch.stack(rows)
