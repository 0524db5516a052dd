"""The serving graphs: what the stream worker runs through onnxruntime, torch left behind.

GRU4Rec serves one click at a time per session, from the hidden state the worker stored:

    (item [B] int64, hidden [layers, B, H] float32) → (top_items [B, K] int64, top_scores [B, K], next_hidden)

NARM reads the whole session (its last L clicks) at every click, so the worker keeps clicks, not a state:

    (items [B, L] int64, lengths [B] int64) → (top_items [B, K] int64, top_scores [B, K])

items holds each session's clicks from position 0, oldest first, then any padding; lengths >= 1.

Top-K is computed inside the graph so only K ids per session leave onnxruntime, and the batch
dimension is dynamic so the worker can score any number of clicks in one call (NARM's L is dynamic too).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.gru4rec import GRU4Rec
from models.narm import NARM

GRU4REC_INPUTS = ("item", "hidden")
GRU4REC_OUTPUTS = ("top_items", "top_scores", "next_hidden")
NARM_INPUTS = ("items", "lengths")
NARM_OUTPUTS = ("top_items", "top_scores")
OPSET = 17


class GRU4RecServingStep(nn.Module):
    def __init__(self, model: GRU4Rec, top_k: int):
        super().__init__()
        if len(set(model.config.layers)) != 1:
            raise ValueError(f"serving stacks the layers' states into one tensor: layers must be equal, got {model.config.layers}")
        if not 0 < top_k <= model.config.n_items:
            raise ValueError(f"top_k must be in 1..{model.config.n_items}, got {top_k}")
        self.model = model
        self.top_k = top_k
        self.eval()  # the exporter restores this mode afterwards: eval, so dropout stays off for the caller too

    def forward(self, item: torch.Tensor, hidden: torch.Tensor):
        scores, next_hidden = self.model(item, list(hidden.unbind(0)))
        top_scores, top_items = torch.topk(scores, self.top_k, dim=1)
        return top_items, top_scores, torch.stack(next_hidden)


def export_gru4rec(model: GRU4Rec, path: Path, top_k: int = 100) -> Path:
    step = GRU4RecServingStep(model, top_k)
    example = (torch.zeros(2, dtype=torch.int64), torch.zeros(model.n_layers, 2, model.hidden_size))
    torch.onnx.export(
        step, example, str(path),
        input_names=list(GRU4REC_INPUTS), output_names=list(GRU4REC_OUTPUTS),
        dynamic_axes={"item": {0: "batch"}, "hidden": {1: "batch"}, "top_items": {0: "batch"},
                      "top_scores": {0: "batch"}, "next_hidden": {1: "batch"}},
        opset_version=OPSET, dynamo=False,
    )
    return path


class NARMServingStep(nn.Module):
    def __init__(self, model: NARM, top_k: int):
        super().__init__()
        if not 0 < top_k <= model.config.n_items:
            raise ValueError(f"top_k must be in 1..{model.config.n_items}, got {top_k}")
        self.model = model
        self.top_k = top_k
        self.eval()  # the exporter restores this mode afterwards: eval, so dropout stays off for the caller too

    def forward(self, items: torch.Tensor, lengths: torch.Tensor):
        top_scores, top_items = torch.topk(self.model(items, lengths), self.top_k, dim=1)
        return top_items, top_scores


def export_narm(model: NARM, path: Path, top_k: int = 100) -> Path:
    step = NARMServingStep(model, top_k)
    example = (torch.zeros(2, model.config.max_len, dtype=torch.int64), torch.ones(2, dtype=torch.int64))
    torch.onnx.export(
        step, example, str(path),
        input_names=list(NARM_INPUTS), output_names=list(NARM_OUTPUTS),
        dynamic_axes={"items": {0: "batch", 1: "length"}, "lengths": {0: "batch"}, "top_items": {0: "batch"},
                      "top_scores": {0: "batch"}},
        opset_version=OPSET, dynamo=False,
    )
    return path
