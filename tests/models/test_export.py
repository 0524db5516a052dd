"""The query graphs (a retriever's session step without its scoring) against torch: query · item vectors are the
model's own scores, so a top K searched in an index of those vectors is the graph's."""

import numpy as np
import onnx
import onnxruntime as ort
import torch

from models import export
from models.export import export_gru4rec, export_gru4rec_query, export_narm_query, item_vectors
from models.gru4rec import GRU4Rec, GRU4RecConfig
from models.narm import NARM, NARMConfig


def test_gru4rec_query_times_item_vectors_is_the_models_scores(tmp_path):
    torch.manual_seed(0)
    model = GRU4Rec(GRU4RecConfig(n_items=300, layers=(24, 24)))
    with torch.no_grad():
        model.output_bias.normal_()  # a bias that matters: the query's appended 1 carries it
    session = ort.InferenceSession(str(export_gru4rec_query(model, tmp_path / "q.onnx")))
    vectors = item_vectors(model)
    for batch in (1, 5):
        items = torch.randint(0, 300, (batch,))
        hidden = torch.randn(2, batch, 24)
        query, next_hidden = session.run(None, {"item": items.numpy(), "hidden": hidden.numpy()})
        with torch.no_grad():
            scores, expected_hidden = model(items, list(hidden.unbind(0)))
        np.testing.assert_allclose(query @ vectors.T, scores.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(next_hidden, torch.stack(expected_hidden).numpy(), rtol=1e-5, atol=1e-5)


def test_narm_query_times_item_vectors_is_the_models_scores(tmp_path):
    torch.manual_seed(1)
    model = NARM(NARMConfig(n_items=200, embedding_dim=12, hidden_size=16, max_len=5)).eval()
    session = ort.InferenceSession(str(export_narm_query(model, tmp_path / "q.onnx")))
    items = torch.randint(0, 200, (4, 5))
    lengths = torch.tensor([1, 3, 5, 2])
    [query] = session.run(None, {"items": items.numpy(), "lengths": lengths.numpy()})
    with torch.no_grad():
        scores = model(items, lengths)
    np.testing.assert_allclose(query @ item_vectors(model).T, scores.numpy(), rtol=1e-4, atol=1e-4)


def test_a_graph_past_the_size_limit_keeps_its_weights_in_its_own_data_file(tmp_path, monkeypatch):
    """Past `EXTERNAL_DATA_BYTES` each graph keeps its weights in one data file of its own, each weight from a page
    boundary (onnxruntime maps them), and serves what the single-file graph serves. Past protobuf's 2 GiB the exporter
    alone would write each weight to a file named after it, where two graphs of one artifact overwrite each other's."""
    torch.manual_seed(2)
    model = GRU4Rec(GRU4RecConfig(n_items=300, layers=(24,)))
    single = tmp_path / "single"
    single.mkdir()
    export_gru4rec(model, single / "g.onnx", top_k=10)
    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 0)
    beside = tmp_path / "beside"
    beside.mkdir()
    for _ in range(2):  # exported again over itself: the data file is rewritten, not appended to
        export_gru4rec(model, beside / "g.onnx", top_k=10)
        export_gru4rec_query(model, beside / "g_query.onnx")
    assert sorted(p.name for p in beside.iterdir()) == ["g.onnx", "g.onnx.data", "g_query.onnx", "g_query.onnx.data"]
    table_bytes = 300 * 24 * 4
    assert (beside / "g.onnx").stat().st_size < table_bytes < (beside / "g.onnx.data").stat().st_size
    # each weight from a page boundary: what lets onnxruntime map it instead of copying it
    weights = onnx.load(str(beside / "g.onnx"), load_external_data=False).graph.initializer
    offsets = [int(entry.value) for weight in weights for entry in weight.external_data if entry.key == "offset"]
    assert len(offsets) >= 3 and all(offset % export.PAGE == 0 for offset in offsets)
    hidden = np.random.default_rng(0).normal(size=(1, 3, 24)).astype(np.float32)
    feed = {"item": np.array([3, 7, 299]), "hidden": hidden}
    expected = ort.InferenceSession(str(single / "g.onnx")).run(None, feed)
    for got, want in zip(ort.InferenceSession(str(beside / "g.onnx")).run(None, feed), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    query, _ = ort.InferenceSession(str(beside / "g_query.onnx")).run(None, feed)
    np.testing.assert_allclose(np.sort(query @ item_vectors(model).T, axis=1)[:, ::-1][:, :10], expected[1],
                               rtol=1e-5, atol=1e-5)
