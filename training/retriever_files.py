"""A retriever's serving files: its graph (the exact top K), its query graph and the index of its item vectors.

Every path that exports a retriever (a retrain, an incremental update) writes them here, together, so that an
artifact's index is always built from its own model's item vectors (`stream_app.inference.item_index`; the worker
searches it for big catalogues: docs/serving.md, Top-K through an index).
"""

from __future__ import annotations

from pathlib import Path

from models.export import export_gru4rec, export_gru4rec_query, export_narm, export_narm_query, item_vectors
from stream_app.inference import item_index

GRAPHS = {"gru4rec": (export_gru4rec, export_gru4rec_query), "narm": (export_narm, export_narm_query)}


def export_retriever(name: str, model, path: Path, top_k: int) -> dict:
    """Write the retriever's graph to `path` and its query graph and index beside it; returns the manifest
    entry's fields that name the two (`query_file`, `index`)."""
    graph, query_graph = GRAPHS[name]
    graph(model, path, top_k=top_k)
    query_path = query_graph(model, path.with_name(f"{path.stem}_query.onnx"))
    index = item_index.build(item_vectors(model), path.with_name(f"{path.stem}.faiss"))
    return {"query_file": query_path.name, "index": index}
