"""The worker's NARM and two-stage (DIEN re-ranking) pipelines against the ONNX graphs called directly."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from devtools.embedded_broker import EmbeddedBroker
from stream_app.inference import scoring
from stream_app.inference.artifact_format import MANIFEST, ArtifactError, sha256_of, weights_file, write_json
from stream_app.inference.scoring import Scorer, StepResult
from stream_app.inference.sessions import SessionRecommender, SessionState
from tests.real_slices import yoochoose_slice
from tests.stream_app.inference.test_sessions import serve, sourced
from tests.stream_app.worker.test_serving import click_message, real_sessions

TOP_K = 20


def graph_suggestion(artifact: Path, pipeline: str, clicks: list[int]) -> tuple[list[int], np.ndarray]:
    """The served top 20 after `clicks` (model indices), written out from the artifact's contract alone:
    the retriever on the whole prefix, batch 1, then w x its scores + DIEN's for its top N, best first, then its
    other candidates."""
    manifest = json.loads((artifact / "manifest.json").read_text())["models"]
    retriever, _, reranker = pipeline.partition("+")
    graph = ort.InferenceSession(str(artifact / manifest[retriever]["file"]))
    if retriever == "gru4rec":
        spec = manifest["gru4rec"]
        hidden = np.zeros((spec["layers"], 1, spec["hidden_size"]), dtype=np.float32)
        for item in clicks:
            top_items, top_scores, hidden = graph.run(None, {"item": np.array([item]), "hidden": hidden})
    else:
        window = np.array([clicks[-manifest["narm"]["max_len"]:]])
        top_items, top_scores = graph.run(None, {"items": window, "lengths": np.array([window.shape[1]])})
    items, scores = top_items[0], top_scores[0]
    if reranker:
        dien = manifest["dien"]
        n = dien.get("serving_candidates", dien["n_candidates"])
        history = np.array([clicks[-dien["max_len"]:]])  # batch 1: no padding
        [extra] = ort.InferenceSession(str(artifact / dien["file"])).run(
            None, {"items": history, "lengths": np.array([history.shape[1]]), "candidates": items[None, :n]})
        reranked = dien["prior_weight"] * scores[:n] + extra[0]
        order = np.argsort(-reranked, kind="stable")
        # then the retriever's other candidates, in its order, at the re-ranked list's lowest score
        items = np.concatenate([items[:n][order], items[n:]])
        scores = np.concatenate([reranked[order], np.full(len(items) - n, reranked[order][-1])])
    return items[:TOP_K].tolist(), scores[:TOP_K]


def last_clicks_served(scorer: Scorer, count: int = 12) -> tuple[list[list[int]], StepResult]:
    """The first `count` real test sessions' known clicks (model indices), and what `scorer` serves at each one's
    last click, the sessions in one batch."""
    _, test, item_map, _ = yoochoose_slice()
    sessions = [known for s in range(count) if (known := scorer.known_indices(
        [str(item_map.ids[i]) for i in test.items[test.offsets[s]:test.offsets[s + 1]]]))]
    assert len({min(len(clicks), scorer.reranker_len) for clicks in sessions}) > 2  # histories of mixed lengths
    return sessions, scorer.score(np.array([clicks[-1] for clicks in sessions]),
                                  scorer.rebuild_hidden([clicks[:-1] for clicks in sessions]),
                                  [clicks[-scorer.window:] for clicks in sessions])


@pytest.mark.parametrize("pipeline", ["narm", "gru4rec+dien"])
def test_served_suggestions_equal_the_graphs_offline(three_model_artifact: Path, pipeline: str) -> None:
    scorer = Scorer(three_model_artifact, pipeline=pipeline)
    assert scorer.name == pipeline and scorer.stateful == pipeline.startswith("gru4rec")
    engine = SessionRecommender(scorer, top_k=TOP_K, max_history=50, session_ttl=1e9, exclude_seen=False)
    _, test, item_map, _ = yoochoose_slice()  # real test sessions, as external item ids
    sessions = [[str(item_map.ids[i]) for i in test.items[test.offsets[s]:test.offsets[s + 1]]] for s in range(40)]
    table: dict[bytes, SessionState] = {}
    checked = 0
    for position in range(max(map(len, sessions))):  # one batch per click position, sessions interleaved
        batch = [(s, clicks[position]) for s, clicks in enumerate(sessions) if position < len(clicks)]
        suggestions = serve(engine, [sourced(f"s{s}", item) for s, item in batch], table, 0.0)
        for (s, item), suggestion in zip(batch, suggestions, strict=True):
            if scorer.index_of(item) is None:
                assert suggestion.source == "popularity"
                continue
            known = [i for c in sessions[s][: position + 1] if (i := scorer.index_of(c)) is not None]
            expected_items, expected_scores = graph_suggestion(three_model_artifact, pipeline, known)
            assert suggestion.items == [scorer.item_ids[i] for i in expected_items]
            np.testing.assert_allclose(suggestion.scores, expected_scores, rtol=1e-4, atol=1e-4)
            assert suggestion.model == pipeline and suggestion.source == "model"
            checked += 1
    assert checked >= 100  # most clicks of 40 real sessions
    assert max(len(clicks) for clicks in sessions) > scorer.window  # some sessions outgrow the models' L


def test_narm_reads_only_its_last_clicks_of_a_longer_window(three_model_artifact: Path) -> None:
    """A window longer than NARM's L (as when DIEN reads more clicks) gives what the last L give."""
    scorer = Scorer(three_model_artifact, pipeline="narm")
    _, test, item_map, _ = yoochoose_slice()
    known = [i for item in test.items if (i := scorer.index_of(str(item_map.ids[item]))) is not None]
    long_window = known[: 3 * scorer.retriever_len]
    last = long_window[-scorer.retriever_len:]
    no_state = np.zeros(0, dtype=np.int64)
    both = scorer.score(no_state, None, [long_window, last])
    np.testing.assert_array_equal(both.top_items[0], both.top_items[1])
    np.testing.assert_allclose(both.top_scores[0], both.top_scores[1], rtol=1e-5)


def test_a_pipeline_the_artifact_cannot_serve_is_refused(artifact: Path, three_model_artifact: Path) -> None:
    with pytest.raises(ArtifactError, match="'narm'"):
        Scorer(artifact, pipeline="narm")  # a GRU4Rec-only artifact
    with pytest.raises(ArtifactError, match="re-ranks gru4rec's"):
        Scorer(three_model_artifact, pipeline="narm+dien")  # its DIEN learnt GRU4Rec's candidates
    with pytest.raises(ValueError, match="pipeline must be one of"):
        Scorer(three_model_artifact, pipeline="dien")


def test_dien_re_ranks_the_manifests_serving_candidates(three_model_artifact: Path, tmp_path: Path) -> None:
    """Training may serve fewer candidates than DIEN learnt to re-rank (`serving_candidates`), never more."""
    copy = tmp_path / "artifact"
    shutil.copytree(three_model_artifact, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    dien = manifest["models"]["dien"]
    dien["serving_candidates"] = dien["n_candidates"] + 1
    write_json(copy / MANIFEST, manifest)
    with pytest.raises(ArtifactError, match="serving_candidates"):
        Scorer(copy, pipeline="gru4rec+dien")
    dien["serving_candidates"] = 10
    write_json(copy / MANIFEST, manifest)
    sessions, served = last_clicks_served(Scorer(copy, pipeline="gru4rec+dien"))
    for row, clicks in enumerate(sessions):  # 10 re-ranked, then the retriever's others: a full suggestion
        expected_items, expected_scores = graph_suggestion(copy, "gru4rec+dien", clicks)
        assert served.top_items[row, :TOP_K].tolist() == expected_items
        np.testing.assert_allclose(served.top_scores[row, :TOP_K], expected_scores, rtol=1e-4, atol=1e-4)
        assert np.all(np.diff(served.top_scores[row]) <= 0)  # best first, as suggestions are read


@pytest.mark.parametrize("threads", [1, 2])
def test_dien_scores_a_batch_in_calls_of_like_histories_as_in_one(three_model_artifact: Path, threads: int,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch cut into DIEN calls of a few rows each, sorted by history length and run side by side, serves what
    one call over the whole batch serves."""
    whole = Scorer(three_model_artifact, intra_op_threads=threads, pipeline="gru4rec+dien")
    monkeypatch.setattr(scoring, "RERANK_ROWS", 3)
    cut = Scorer(three_model_artifact, intra_op_threads=threads, pipeline="gru4rec+dien")
    sessions, one_call = last_clicks_served(whole, count=30)
    assert whole.rerank_rows >= len(sessions) > 3 * cut.rerank_rows  # one call, against four or more
    _, in_calls = last_clicks_served(cut, count=30)
    np.testing.assert_array_equal(in_calls.top_items, one_call.top_items)
    np.testing.assert_allclose(in_calls.top_scores, one_call.top_scores, rtol=1e-6, atol=1e-6)


def test_a_dien_graph_of_fixed_length_is_fed_histories_padded_to_it(three_model_artifact: Path,
                                                                    tmp_path: Path) -> None:
    """An artifact exported before DIEN's L was dynamic (DIEN itself traced: L fixed at max_len) serves as the
    same DIEN's dynamic graph does."""
    torch = pytest.importorskip("torch")
    from models.checkpoint import load_checkpoint
    from models.export import DIEN_INPUTS, DIEN_OUTPUTS, _export

    copy = tmp_path / "artifact"
    shutil.copytree(three_model_artifact, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    dien = manifest["models"]["dien"]
    example = (torch.zeros(2, dien["max_len"], dtype=torch.int64), torch.ones(2, dtype=torch.int64),
               torch.zeros(2, 3, dtype=torch.int64))
    _export(load_checkpoint(copy / weights_file(dien)).model, example, copy / dien["file"], DIEN_INPUTS, DIEN_OUTPUTS,
            {"items": {0: "batch"}, "lengths": {0: "batch"}, "candidates": {0: "batch", 1: "candidates"},
             "scores": {0: "batch", 1: "candidates"}})
    manifest["files"][dien["file"]] = sha256_of(copy / dien["file"])
    write_json(copy / MANIFEST, manifest)
    fixed, dynamic = (Scorer(artifact, pipeline="gru4rec+dien") for artifact in (copy, three_model_artifact))
    assert fixed.reranker_fixed_len and not dynamic.reranker_fixed_len
    (_, served), (_, expected) = last_clicks_served(fixed), last_clicks_served(dynamic)
    np.testing.assert_array_equal(served.top_items, expected.top_items)
    np.testing.assert_allclose(served.top_scores, expected.top_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.broker
def test_a_worker_serves_the_two_stage_pipeline_its_settings_name(
    broker: EmbeddedBroker,
    three_model_artifact: Path,
    launch_worker: Callable[..., Any],
    worker_fields: Callable[..., dict[str, Any]],
    tmp_path: Path,
) -> None:
    fields = worker_fields(broker.bootstrap_servers, tmp_path, serving_artifact_dir=three_model_artifact,
                           serving_model="gru4rec+dien", exclude_seen=False)
    scorer = Scorer(three_model_artifact, pipeline="gru4rec+dien")
    clicks = [(session, item) for session, item in real_sessions(40) if scorer.index_of(item) is not None]
    with launch_worker(fields, tmp_path / "worker.log", require_model=True) as worker:
        worker.produce(worker.settings.clicks_topic, [click_message(*click) for click in clicks])
        records = worker.consume(worker.settings.recommendations_topic, len(clicks))
        assert worker.metric("nextclick_model_info", artifact_version=scorer.version, name="gru4rec+dien") == 1
    by_session: dict[str, list[dict]] = {}
    for record in records:
        suggestion = json.loads(record.value)
        by_session.setdefault(suggestion["session_id"], []).append(suggestion)
    history: dict[str, list[int]] = {}
    for session, item in clicks:
        history.setdefault(session, []).append(scorer.index_of(item))
        suggestion = by_session[session].pop(0)
        expected, _ = graph_suggestion(three_model_artifact, "gru4rec+dien", history[session])
        assert suggestion["model"] == "gru4rec+dien"
        assert suggestion["items"] == [scorer.item_ids[i] for i in expected]
