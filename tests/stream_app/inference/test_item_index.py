"""A retriever's top K through its item index: equal to the exact top K of the vectors it holds where it searches every
list, those the item vectors to float16 precision, and an index that does not hold its model's item vectors (another
model's, another count) refused, the old version serving."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import faiss
import numpy as np
import pytest

from devtools.artifact_versions import edit_manifest, rehash, renamed
from stream_app.inference import item_index
from stream_app.inference.artifact_format import MANIFEST, ArtifactError
from stream_app.inference.item_index import PARALLEL_FROM, ItemIndex, build
from stream_app.inference.scoring import Scorer
from stream_app.settings import Settings
from stream_app.worker.metrics import WorkerMetrics
from stream_app.worker.model_swap import ServedModel

K = 100


def exhaustive(folder: Path) -> Path:
    """The artifact's index set to search all its lists: exact for the vectors it holds."""
    models = json.loads((folder / MANIFEST).read_text())["models"]
    models["gru4rec"]["index"]["nprobe"] = models["gru4rec"]["index"]["nlist"]
    edit_manifest(folder, models=models)
    return folder


def held_vectors(path: Path) -> np.ndarray:
    """The vectors an index holds, its float16 codes decoded, in item order."""
    index = faiss.read_index(str(path))
    faiss.extract_index_ivf(index).make_direct_map()
    return index.reconstruct_n(0, index.ntotal)


def test_an_index_searching_every_list_ranks_exactly_by_the_vectors_it_holds(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5_000, 17)).astype(np.float32)
    entry = build(vectors, tmp_path / "items.faiss")
    entry["nprobe"] = entry["nlist"]
    queries = rng.standard_normal((64, 17)).astype(np.float32)
    items, scores = ItemIndex(tmp_path, entry, len(vectors)).top(queries, K)
    exact = queries @ held_vectors(tmp_path / "items.faiss")[:, :17].T
    best = -np.sort(-exact, axis=1)[:, :K]
    np.testing.assert_allclose(np.take_along_axis(exact, items, axis=1), best, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores, best, rtol=1e-5, atol=1e-5)
    assert_same_items(items, np.argsort(-exact, axis=1, kind="stable")[:, :K])


def test_the_held_vectors_are_the_items_to_float16_precision_and_rank_as_they_do(tmp_path: Path) -> None:
    """The index's codes are float16 (of each vector's offset from its list's centroid): each vector held within
    float16's rounding, the padding zero, and searched exhaustively the top 20 nearly all of the float top 20."""
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((5_000, 17)).astype(np.float32)
    entry = build(vectors, tmp_path / "items.faiss")
    held = held_vectors(tmp_path / "items.faiss")
    assert held.shape == (5_000, entry["index_dim"]) and entry["index_dim"] % item_index.DIMENSION_BLOCK == 0
    assert not held[:, 17:].any()
    np.testing.assert_allclose(held[:, :17], vectors, rtol=0, atol=2 * np.abs(vectors).max() * 2.0**-11)
    entry["nprobe"] = entry["nlist"]
    queries = rng.standard_normal((256, 17)).astype(np.float32)
    found, _ = ItemIndex(tmp_path, entry, len(vectors)).top(queries, 20)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :20]
    agreement = np.mean([len(set(f) & set(e)) / 20 for f, e in zip(found, exact, strict=True)])
    assert agreement >= 0.99


def test_a_batch_searched_on_every_thread_finds_what_one_thread_finds(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((5_000, 17)).astype(np.float32)
    entry = build(vectors, tmp_path / "items.faiss")
    queries = rng.standard_normal((PARALLEL_FROM * 2, 17)).astype(np.float32)
    one = ItemIndex(tmp_path, entry, len(vectors), threads=1)
    every = ItemIndex(tmp_path, entry, len(vectors), threads=0)
    assert every.threads > 1 or (os.cpu_count() or 1) == 1
    for rows in (queries, queries[:3]):  # a backlog's batch (on every thread) and a trickle's (on one)
        for found, expected in zip(every.top(rows, K), one.top(rows, K), strict=True):
            np.testing.assert_array_equal(found, expected)


def assert_same_items(found: np.ndarray, expected: np.ndarray) -> None:
    """The same items in the same places but for a few swaps of equal scores (summed in another order)."""
    assert np.mean(found == expected) > 0.995


def test_the_index_serves_the_graphs_top_k(artifact: Path, tmp_path: Path) -> None:
    folder = exhaustive(renamed(artifact, tmp_path / "copy", "exhaustive"))
    exact, indexed = Scorer(folder, topk_index="exact"), Scorer(folder, topk_index="ann")
    assert exact.index is None and indexed.index is not None
    items = np.arange(12) * 7 % len(exact.item_ids)
    hidden = np.random.default_rng(1).standard_normal((exact.layers, 12, exact.hidden_size)).astype(np.float32)
    graph, searched = exact.step(items, hidden), indexed.step(items, hidden)
    # the index holds the item vectors as float16 codes: the same best 20, each place's score within their rounding
    for found, expected in zip(searched.top_items[:, :20], graph.top_items[:, :20], strict=True):
        assert set(found) == set(expected)
    np.testing.assert_allclose(searched.top_scores, graph.top_scores, rtol=0,
                               atol=1e-3 * np.abs(graph.top_scores).max())
    np.testing.assert_allclose(searched.next_hidden, graph.next_hidden, rtol=1e-5, atol=1e-6)


def test_auto_searches_the_index_from_the_threshold_on(artifact: Path) -> None:
    n_items = len(json.loads((artifact / "item_ids.json").read_text()))
    assert Scorer(artifact).index is None  # the tiny catalogue is far below the default threshold
    assert Scorer(artifact, topk_index_min_items=n_items).index is not None
    assert Scorer(artifact, topk_index="exact", topk_index_min_items=1).index is None


def test_auto_scores_exactly_where_faiss_is_not_installed(artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(item_index, "installed", lambda: False)
    assert Scorer(artifact, topk_index_min_items=1).index is None  # served exactly rather than refused
    with pytest.raises(ArtifactError, match="needs faiss-cpu"):
        Scorer(artifact, topk_index="ann")


def other_models_index(folder: Path) -> None:
    """An index built from other vectors (as if copied from another version), its checksums made to pass."""
    entry = json.loads((folder / MANIFEST).read_text())["models"]["gru4rec"]["index"]
    rng = np.random.default_rng(2)
    build(rng.standard_normal((entry["n_items"], entry["dim"])).astype(np.float32), folder / entry["file"])
    rehash(folder)


def index_of_fewer_items(folder: Path) -> None:
    """An index one item short of the catalogue, its manifest entry saying so too."""
    models = json.loads((folder / MANIFEST).read_text())["models"]
    entry = models["gru4rec"]["index"]
    rng = np.random.default_rng(3)
    models["gru4rec"]["index"] = build(rng.standard_normal((entry["n_items"] - 1, entry["dim"])).astype(np.float32),
                                       folder / entry["file"])
    edit_manifest(folder, models=models)
    rehash(folder)


@pytest.mark.parametrize(("damage", "message"), [(other_models_index, "does not hold the item vectors"),
                                                  (index_of_fewer_items, "holds")])
def test_an_index_that_does_not_match_its_items_is_refused_and_the_old_version_keeps_serving(
    artifact: Path, tmp_path: Path, damage, message: str
) -> None:
    bad = renamed(artifact, tmp_path / "bad", "bad")
    damage(bad)
    with pytest.raises(ArtifactError, match=message):
        Scorer(bad, topk_index="ann")
    metrics = WorkerMetrics()
    served = ServedModel(Settings(topk_index="ann"), metrics, asyncio.Event())

    async def swaps() -> tuple[bool | None, bool | None]:
        return await served._swap(lambda: artifact, "good"), await served._swap(lambda: bad, "bad")

    assert asyncio.run(swaps()) == (True, False)
    assert served.recommender is not None and served.recommender.scorer.artifact_dir == artifact
    assert served.recommender.scorer.index is not None
    assert metrics.registry.get_sample_value("nextclick_model_swaps_total", {"outcome": "refused"}) == 1
