"""The ONNX scorer on a real (tiny) artifact: the graph's contract, batching, selection, popularity, and
refusing a corrupt artifact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stream_app.inference.artifact_format import ArtifactError
from stream_app.inference.scoring import Scorer


def test_the_artifact_matches_the_contract(scorer: Scorer) -> None:
    batch = 3
    result = scorer.step(np.arange(batch), scorer.zero_hidden(batch))
    assert result.top_items.shape == (batch, scorer.graph_top_k) and result.top_items.dtype == np.int64
    assert result.top_scores.shape == (batch, scorer.graph_top_k) and result.top_scores.dtype == np.float32
    assert result.next_hidden.shape == (scorer.layers, batch, scorer.hidden_size)
    assert np.all(np.diff(result.top_scores, axis=1) <= 0), "best first"
    assert scorer.provider in ("CUDAExecutionProvider", "CPUExecutionProvider")


def test_a_batched_step_equals_single_steps(scorer: Scorer) -> None:
    items = np.array([4, 8, 15])
    hidden = (
        np.random.default_rng(0).standard_normal((scorer.layers, 3, scorer.hidden_size)).astype(np.float32)
    )
    batched = scorer.step(items, hidden)
    for row in range(3):
        single = scorer.step(items[row : row + 1], hidden[:, row : row + 1])
        np.testing.assert_array_equal(single.top_items[0], batched.top_items[row])
        np.testing.assert_allclose(
            single.next_hidden[:, 0], batched.next_hidden[:, row], rtol=1e-5, atol=1e-6
        )


def test_selection_leaves_out_excluded_items_and_keeps_order(scorer: Scorer) -> None:
    result = scorer.step(np.array([0]), scorer.zero_hidden(1))
    top = result.top_items[0].tolist()
    items, scores = scorer.select(result.top_items[0], result.top_scores[0], 5, {top[0], top[2]})
    assert items == [top[1], top[3], top[4], top[5], top[6]]
    assert scores == sorted(scores, reverse=True)
    for exclude in ({top[7], -1}, [top[4]]):  # nothing of the first 5 (a set), or a collection that is no set
        items, _ = scorer.select(result.top_items[0], result.top_scores[0], 5, exclude)
        assert items == [item for item in top if item not in exclude][:5]


def test_popularity_ranks_by_training_clicks(scorer: Scorer) -> None:
    items, scores = scorer.popular(10)
    assert scores == sorted(scores, reverse=True) and scores[0] == scorer.popularity.max()
    assert scorer.popular(9, {items[0]})[0] == items[1:]


def test_a_corrupt_artifact_is_refused(artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    (copy / "item_ids.json").write_text(json.dumps(["tampered"]))
    with pytest.raises(ArtifactError, match="sha256"):
        Scorer(copy)
