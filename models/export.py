"""The serving graphs: what the stream worker runs through onnxruntime, torch left behind.

GRU4Rec serves one click at a time per session, from the hidden state the worker stored:

    (item [B] int64, hidden [layers, B, H] float32) → (top_items [B, K] int64, top_scores [B, K], next_hidden)

NARM reads the whole session (its last L clicks) at every click, so the worker keeps clicks, not a state:

    (items [B, L] int64, lengths [B] int64) → (top_items [B, K] int64, top_scores [B, K])

items holds each session's clicks from position 0, oldest first, then any padding; lengths >= 1.

Each retriever also has a query graph, its session step without the scoring, for a top-K searched in an index
of the item vectors instead (`stream_app.inference.item_index`; docs/serving.md, Top-K through an index):

    GRU4Rec (item [B] int64, hidden [layers, B, H]) → (query [B, H + 1] float32, next_hidden)
    NARM    (items [B, L] int64, lengths [B] int64) → query [B, D] float32

with `item_vectors(model)` the table it is scored against: score = query · vector. GRU4Rec's query is its top
layer's new state with a 1 appended, its vectors [W_y | b_y]; NARM's are B·c and the item embedding E.

DIEN re-ranks the N candidates a retriever returned, from the same padded history:

    (items [B, L] int64, lengths [B] int64, candidates [B, N] int64) → scores [B, N] float32 (logits)

L is dynamic (at most the model's max_len): pad to the batch's longest history. Its AUGRU runs as a loop over
the batch's real clicks only (`DIENServing`), so a batch of short histories costs what they need.

Top-K is computed inside the retrievers' graphs so only K ids per session leave onnxruntime, and the batch
dimension is dynamic so the worker can score any number of clicks in one call (NARM's L and DIEN's L and N are
dynamic too).

A model trained on a GPU is exported from a CPU copy of its weights (`on_cpu`): the graph, and so the
artifact and serving, are the same whatever device trained it. A graph whose weights pass `EXTERNAL_DATA_BYTES`
(a retriever's item table, from a few hundred thousand items) keeps them beside it in `<graph>.onnx.data`, which
onnxruntime maps rather than reads and the artifact's manifest seals like every other file.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx.external_data_helper import set_external_data
from torch import nn

from models.dien import DIEN, DIENEnsemble, augru_first_step, augru_step
from models.gru4rec import GRU4Rec
from models.narm import NARM

GRU4REC_INPUTS = ("item", "hidden")
GRU4REC_OUTPUTS = ("top_items", "top_scores", "next_hidden")
NARM_INPUTS = ("items", "lengths")
NARM_OUTPUTS = ("top_items", "top_scores")
GRU4REC_QUERY_OUTPUTS = ("query", "next_hidden")
NARM_QUERY_OUTPUTS = ("query",)
DIEN_INPUTS = ("items", "lengths", "candidates")
DIEN_OUTPUTS = ("scores",)
OPSET = 17
# a graph whose weights pass this keeps them beside it, in one file (`external_data_file`), each weight on a page of
# its own: onnxruntime then maps them from the file rather than copying them (an item table's rows no click reads stay
# on disk, and the workers of one machine share the pages), and protobuf stops a serialized graph at 2 GiB
EXTERNAL_DATA_BYTES = 64 << 20
PAGE = 4096  # onnxruntime maps an external weight whose offset is a multiple of this, and copies any other
INLINE_BYTES = 1024  # weights under this stay in the graph (biases, shapes)


def on_cpu(model: nn.Module) -> nn.Module:
    """The model itself when it is on the CPU, else a copy there (the trained model stays where it is)."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device.type == "cpu" for t in tensors):
        return model
    return copy.deepcopy(model).cpu()


class _TopKServing(nn.Module):
    """A model wrapped so that its graph returns only the top-K items and their scores."""

    def __init__(self, model: nn.Module, top_k: int):
        super().__init__()
        model = on_cpu(model)
        if not 0 < top_k <= model.config.n_items:
            raise ValueError(f"top_k must be in 1..{model.config.n_items}, got {top_k}")
        self.model = model
        self.top_k = top_k
        self.eval()  # the exporter restores this mode afterwards: eval, so dropout stays off for the caller too

    def top(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        top_scores, top_items = torch.topk(scores, self.top_k, dim=1)
        return top_items, top_scores


class GRU4RecServingStep(_TopKServing):
    def __init__(self, model: GRU4Rec, top_k: int):
        if len(set(model.config.layers)) != 1:
            raise ValueError("serving stacks the layers' states into one tensor: layers must be equal, "
                             f"got {model.config.layers}")
        super().__init__(model, top_k)

    def forward(self, item: torch.Tensor, hidden: torch.Tensor):
        scores, next_hidden = self.model(item, list(hidden.unbind(0)))
        return *self.top(scores), torch.stack(next_hidden)


class NARMServingStep(_TopKServing):
    def forward(self, items: torch.Tensor, lengths: torch.Tensor):
        return self.top(self.model(items, lengths))


class GRU4RecQueryStep(nn.Module):
    """GRU4Rec's step up to the vector its scores are a product with: [h | 1] against [W_y | b_y]."""

    def __init__(self, model: GRU4Rec):
        super().__init__()
        self.model = on_cpu(model)
        self.eval()

    def forward(self, item: torch.Tensor, hidden: torch.Tensor):
        output, next_hidden = self.model.step(self.model.embed(item), list(hidden.unbind(0)))
        return torch.cat([output, torch.ones_like(output[:, :1])], dim=1), torch.stack(next_hidden)


class NARMQueryStep(nn.Module):
    def __init__(self, model: NARM):
        super().__init__()
        self.model = on_cpu(model)
        self.eval()

    def forward(self, items: torch.Tensor, lengths: torch.Tensor):
        return self.model.query(items, lengths)


def item_vectors(model: GRU4Rec | NARM) -> np.ndarray:
    """The table a retriever's query graph output is scored against, float32 [n_items, d], C order."""
    model = on_cpu(model)
    with torch.no_grad():
        if isinstance(model, GRU4Rec):
            table = torch.cat([model.output_weights, model.output_bias], dim=1)
        else:
            table = model.item_embedding
        return np.ascontiguousarray(table.detach().numpy(), dtype=np.float32)


def external_data_file(path: Path) -> Path:
    """Where the graph at `path` keeps its weights when they pass `EXTERNAL_DATA_BYTES`; onnxruntime finds it by
    the name the graph records, relative to the graph's folder."""
    return path.with_name(f"{path.name}.data")


def _save_with_weights_beside(model: onnx.ModelProto, path: Path) -> None:
    """`model` at `path`, its weights of `INLINE_BYTES` or more in `external_data_file(path)`, each from a `PAGE`
    boundary."""
    data = external_data_file(path)
    with data.open("wb") as file:
        for tensor in model.graph.initializer:
            if len(tensor.raw_data) < INLINE_BYTES:
                continue
            file.write(bytes(-file.tell() % PAGE))
            offset = file.tell()
            file.write(tensor.raw_data)
            set_external_data(tensor, data.name, offset, len(tensor.raw_data))
            tensor.data_location = onnx.TensorProto.EXTERNAL
            tensor.ClearField("raw_data")
    onnx.save(model, str(path))


def _export(graph: nn.Module, example: tuple[torch.Tensor, ...], path: Path, inputs: tuple[str, ...],
            outputs: tuple[str, ...], dynamic_axes: dict[str, dict[int, str]]) -> Path:
    external_data_file(path).unlink(missing_ok=True)  # from an earlier export of a bigger graph
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        exported = Path(scratch) / path.name
        with warnings.catch_warnings():
            # Known, and checked by the parity tests (ONNX outputs equal torch's at several batch sizes): the
            # TorchScript exporter is deprecated, but the torch.export-based one is far slower on these graphs
            # (docs/experiments.md) and warns in turn; tracing nn.GRU warns about its own shape checks and about
            # batch sizes other than 1; scripting DIEN's AUGRU loop (`evolve`) warns that TorchScript is deprecated.
            warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export",
                                    DeprecationWarning)
            warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", DeprecationWarning)
            warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning, r"torch\.onnx\.")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.modules\.rnn")
            warnings.filterwarnings("ignore", "Exporting a model to ONNX with a batch_size other than 1", UserWarning)
            torch.onnx.export(graph, example, str(exported), input_names=list(inputs), output_names=list(outputs),
                              dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False)
        # past 2 GiB the exporter itself writes each weight to a file of its own name beside the graph: in an
        # artifact two graphs' files of one name would overwrite each other, so they too go into the graph's own file
        if len(list(Path(scratch).iterdir())) > 1 or exported.stat().st_size > EXTERNAL_DATA_BYTES:
            _save_with_weights_beside(onnx.load(str(exported)), path)
        else:
            exported.replace(path)
    return path


def export_gru4rec(model: GRU4Rec, path: Path, top_k: int = 100) -> Path:
    example = (torch.zeros(2, dtype=torch.int64), torch.zeros(model.n_layers, 2, model.hidden_size))
    return _export(GRU4RecServingStep(model, top_k), example, path, GRU4REC_INPUTS, GRU4REC_OUTPUTS,
                   {"item": {0: "batch"}, "hidden": {1: "batch"}, "top_items": {0: "batch"},
                    "top_scores": {0: "batch"}, "next_hidden": {1: "batch"}})


def export_narm(model: NARM, path: Path, top_k: int = 100) -> Path:
    example = (torch.zeros(2, model.config.max_len, dtype=torch.int64), torch.ones(2, dtype=torch.int64))
    return _export(NARMServingStep(model, top_k), example, path, NARM_INPUTS, NARM_OUTPUTS,
                   {"items": {0: "batch", 1: "length"}, "lengths": {0: "batch"}, "top_items": {0: "batch"},
                    "top_scores": {0: "batch"}})


def export_gru4rec_query(model: GRU4Rec, path: Path) -> Path:
    example = (torch.zeros(2, dtype=torch.int64), torch.zeros(model.n_layers, 2, model.hidden_size))
    return _export(GRU4RecQueryStep(model), example, path, GRU4REC_INPUTS, GRU4REC_QUERY_OUTPUTS,
                   {"item": {0: "batch"}, "hidden": {1: "batch"}, "query": {0: "batch"}, "next_hidden": {1: "batch"}})


def export_narm_query(model: NARM, path: Path) -> Path:
    example = (torch.zeros(2, model.config.max_len, dtype=torch.int64), torch.ones(2, dtype=torch.int64))
    return _export(NARMQueryStep(model), example, path, NARM_INPUTS, NARM_QUERY_OUTPUTS,
                   {"items": {0: "batch", 1: "length"}, "lengths": {0: "batch"}, "query": {0: "batch"}})


@torch.jit.script_if_tracing
def evolve(projected: torch.Tensor, attention: torch.Tensor, hidden_weight: torch.Tensor,
           lengths: torch.Tensor) -> torch.Tensor:
    """h'_T [B, N, D]: the AUGRU of `models.dien` over rows sorted longest history first, from their input
    projections `projected` [B, L, 3D], `attention` [B, N, L] and U = `hidden_weight` [3D, D]. Row b's state
    changes only at its real clicks, so step t updates the rows with more than t clicks, the first n_t, and
    sets the others' final states aside (copied once, not carried through every later step); the loop stops at
    the longest history's last click. The first step, from h'_0 = 0, skips the product with U."""
    hidden = augru_first_step(projected[:, 0:1], attention[:, :, 0:1])  # every row has a first click
    finished: list[torch.Tensor] = []  # the rows whose last click is behind, shortest histories first
    for t in range(1, int(lengths[0])):
        n = int((lengths > t).sum())
        finished.insert(0, hidden[n:])
        hidden = augru_step(projected[:n, t : t + 1], hidden[:n], attention[:n, :, t : t + 1], hidden_weight)
    finished.insert(0, hidden)
    return torch.cat(finished)


class DIENServing(nn.Module):
    """DIEN's serving graph: `DIEN.forward` (or `DIENEnsemble.forward`, the members' logits averaged) with the
    AUGRU's work following the histories' real lengths.

    Traced, `DIEN.score`'s Python loop would unroll into a graph of exactly L steps, and every history would pay
    for all L of them, padding included, though padding leaves h' unchanged (a_t = 0 there). Here the loop is
    scripted (`evolve`), so it exports as an ONNX Loop over the batch's longest history, and the batch is sorted
    longest first so that the rows still inside their clicks at step t are a prefix of it: each step updates
    only those, and the scores go back to the input's row order at the end."""

    def __init__(self, model: DIEN | DIENEnsemble):
        super().__init__()
        model = on_cpu(model)
        self.members = nn.ModuleList(model.members if isinstance(model, DIENEnsemble) else [model])
        self.eval()

    def forward(self, items: torch.Tensor, lengths: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        order = torch.argsort(lengths, descending=True)  # longest history first
        items, lengths, candidates = items[order], lengths[order], candidates[order]
        logits = torch.stack([self.score(member, items, lengths, candidates) for member in self.members]).mean(0)
        return torch.zeros_like(logits).index_copy(0, order, logits)  # back in the input's row order

    @staticmethod
    def score(model: DIEN, items: torch.Tensor, lengths: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """`DIEN.score`'s logits [B, N] for rows sorted longest first, its AUGRU loop `evolve`."""
        embedded, states, mask = model.extract(items, lengths)
        target = model.embed(candidates)
        attention = model.attend(states, mask, target)
        evolved = evolve(model.evolution.project(states), attention, model.evolution.hidden_gates.weight, lengths)
        return model.head(embedded, mask, target, evolved)


def export_dien(model: DIEN | DIENEnsemble, path: Path) -> Path:
    example = (torch.zeros(2, 3, dtype=torch.int64), torch.tensor([3, 1]), torch.zeros(2, 4, dtype=torch.int64))
    return _export(DIENServing(model), example, path, DIEN_INPUTS, DIEN_OUTPUTS,
                   {"items": {0: "batch", 1: "length"}, "lengths": {0: "batch"},
                    "candidates": {0: "batch", 1: "candidates"}, "scores": {0: "batch", 1: "candidates"}})
