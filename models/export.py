"""The serving graphs: what the stream worker runs through onnxruntime, torch left behind.

GRU4Rec serves one click at a time per session, from the hidden state the worker stored:

    (item [B] int64, hidden [layers, B, H] float32) → (top_items [B, K] int64, top_scores [B, K], next_hidden)

Top-K is computed inside the graph so only K ids per session leave onnxruntime, and the batch
dimension is dynamic so the worker can score any number of clicks in one call.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.gru4rec import GRU4Rec

GRU4REC_INPUTS = ("item", "hidden")
GRU4REC_OUTPUTS = ("top_items", "top_scores", "next_hidden")
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
