"""Incremental updates: checkpoints equal the served graphs, grown items leave old scores alone, warm starts
start from the current weights, and an update over real new clicks gives a servable artifact with more items."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.checkpoint import Checkpoint, grown, load_checkpoint
from models.export import GRU4RecServingStep, NARMServingStep
from stream_app.inference.artifact_format import ITEM_IDS, REPLAY, verify_artifact
from stream_app.inference.events import Click
from stream_app.inference.scoring import Scorer
from stream_app.inference.sessions import SessionRecommender, SessionState
from stream_app.inference.suggestion import SourcedClick
from stream_app.settings import Settings
from training.artifact import merged_replay
from training.data.click_log import Sessions
from training.data.datasets import load_dataset
from training.incremental import UpdateBudget, co_clicked, grown_item_map, update
from training.trainers.gru4rec import GRU4RecTrainer, GRU4RecTraining
from training.trainers.narm import NARMTraining, train_narm

pytestmark = pytest.mark.training


def checkpoint_of(artifact: Path, name: str) -> Checkpoint:
    return load_checkpoint(artifact / verify_artifact(artifact)["models"][name]["weights"])


def model_of(artifact: Path, name: str) -> torch.nn.Module:
    return checkpoint_of(artifact, name).model


def run(artifact: Path, name: str, *inputs: np.ndarray) -> list[np.ndarray]:
    graph = ort.InferenceSession(str(artifact / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    return graph.run(None, {i.name: x for i, x in zip(graph.get_inputs(), inputs, strict=True)})


def narm_inputs(n_items: int) -> tuple[np.ndarray, np.ndarray]:
    items = np.random.default_rng(0).integers(0, n_items, size=(8, 6)).astype(np.int64)
    return items, np.array([1, 2, 3, 4, 5, 6, 6, 2], dtype=np.int64)


def test_each_checkpoint_scores_as_its_served_graph(three_model_artifact: Path) -> None:
    gru4rec = model_of(three_model_artifact, "gru4rec")
    items = np.arange(8, dtype=np.int64)
    hidden = np.zeros((gru4rec.n_layers, 8, gru4rec.hidden_size), np.float32)
    top_items, top_scores, next_hidden = run(three_model_artifact, "gru4rec", items, hidden)
    with torch.no_grad():
        expected = GRU4RecServingStep(gru4rec, top_items.shape[1])(torch.from_numpy(items), torch.from_numpy(hidden))
    np.testing.assert_allclose(top_scores, expected[1].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(next_hidden, expected[2].numpy(), rtol=1e-5, atol=1e-5)

    narm = model_of(three_model_artifact, "narm")
    inputs = narm_inputs(narm.config.n_items)
    top_items, top_scores = run(three_model_artifact, "narm", *inputs)
    with torch.no_grad():
        expected = NARMServingStep(narm, top_items.shape[1])(*map(torch.from_numpy, inputs))
    np.testing.assert_allclose(top_scores, expected[1].numpy(), rtol=1e-5, atol=1e-5)

    dien = model_of(three_model_artifact, "dien")
    candidates = np.arange(24, dtype=np.int64).reshape(8, 3)
    [scores] = run(three_model_artifact, "dien", *inputs, candidates)
    with torch.no_grad():
        np.testing.assert_allclose(scores, dien(*map(torch.from_numpy, (*inputs, candidates))).numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_grown_items_leave_every_known_items_score_unchanged(three_model_artifact: Path) -> None:
    neighbours = [np.array([0, 3]), np.array([], dtype=np.int64), np.array([5])]
    checkpoint = checkpoint_of(three_model_artifact, "gru4rec")
    gru4rec, bigger = checkpoint.model, grown(checkpoint, neighbours)
    n = gru4rec.config.n_items
    assert bigger.model.config.n_items == n + 3
    items = torch.arange(6)
    with torch.no_grad():
        old_scores, old_hidden = gru4rec(items, gru4rec.initial_hidden(6))
        new_scores, new_hidden = bigger.model(items, bigger.model.initial_hidden(6))
    np.testing.assert_allclose(new_scores[:, :n].numpy(), old_scores.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(new_hidden[0].numpy(), old_hidden[0].numpy())
    torch.testing.assert_close(bigger.model.output_weights[n], gru4rec.output_weights[[0, 3]].mean(0))
    torch.testing.assert_close(bigger.model.output_weights[n + 1], gru4rec.output_weights.mean(0))  # none co-clicked
    torch.testing.assert_close(bigger.model.output_bias[n + 2], gru4rec.output_bias[5])
    # the optimiser's statistics grow with the tables they belong to, and only those
    for name, square in bigger.optimiser["squares"].items():
        kept = checkpoint.optimiser["squares"][name]
        assert len(square) == (n + 3 if name.startswith("output_") else len(kept))
        torch.testing.assert_close(square[:len(kept)], kept)

    narm = model_of(three_model_artifact, "narm")
    inputs = tuple(map(torch.from_numpy, narm_inputs(narm.config.n_items)))
    with torch.no_grad():
        np.testing.assert_allclose(grown(checkpoint_of(three_model_artifact, "narm"), neighbours).model(*inputs)[:, :n]
                                   .numpy(), narm(*inputs).numpy(), rtol=1e-6, atol=1e-6)

    dien = checkpoint_of(three_model_artifact, "dien")
    candidates = torch.arange(24).reshape(8, 3)
    with torch.no_grad():
        np.testing.assert_array_equal(grown(dien, neighbours).model(*inputs, candidates).numpy(),
                                      dien.model(*inputs, candidates).numpy())


def test_a_warm_start_continues_the_weights_and_the_optimiser(three_model_artifact: Path) -> None:
    checkpoint = checkpoint_of(three_model_artifact, "gru4rec")
    gru4rec, kept = checkpoint.model, checkpoint.optimiser
    assert kept["kind"] == "adagrad" and kept["squares"]
    popularity = np.ones(gru4rec.config.n_items, np.int64)
    params = GRU4RecTraining(layers=(gru4rec.hidden_size,), n_sample=16, batch_size=4)
    trainer = GRU4RecTrainer(popularity, params, warm=gru4rec, warm_optimiser=kept)
    before = model_of(three_model_artifact, "gru4rec").state_dict()
    assert all(torch.equal(before[name], tensor) for name, tensor in trainer.model.state_dict().items())
    names = {id(p): name for name, p in trainer.model.named_parameters()}
    for p, accumulated in trainer.optimiser.accumulators():  # dense sums whole, a table's as its row means
        square = kept["squares"][names[id(p)]]
        torch.testing.assert_close(accumulated.reshape(len(accumulated), -1).mean(1) if square.dim() == 1
                                   and accumulated.dim() > 1 else accumulated, square)
    assert all(a.abs().sum() > 0 for _, a in trainer.optimiser.accumulators())
    with pytest.raises(ValueError, match="items"):
        GRU4RecTrainer(popularity[:-1], params, warm=gru4rec)

    checkpoint = checkpoint_of(three_model_artifact, "narm")
    narm, kept = checkpoint.model, checkpoint.optimiser
    assert kept["kind"] == "adam" and 0 < kept["lr"] <= NARMTraining().learning_rate  # where the schedule left it
    sessions = Sessions(np.array([0, 3, 5]), np.array([1, 2, 3, 4, 5]), 0)
    untrained, history = train_narm(
        sessions, np.ones(narm.config.n_items, np.int64),
        NARMTraining(hidden_size=narm.config.hidden_size, embedding_dim=narm.config.embedding_dim,
                     max_len=narm.config.max_len, n_epochs=0), progress=False, warm=narm, warm_optimiser=kept)
    fresh = model_of(three_model_artifact, "narm")
    assert all(torch.equal(fresh.state_dict()[name], tensor) for name, tensor in untrained.state_dict().items())
    assert history.optimiser_state["lr"] == kept["lr"] and history.optimiser_state["steps"] == kept["steps"]
    for name, square in kept["squares"].items():
        torch.testing.assert_close(history.optimiser_state["squares"][name], square)


def test_new_items_start_from_the_known_items_clicked_with_them() -> None:
    sessions = Sessions(np.array([0, 3, 5, 7]), np.array([0, 5, 1, 2, 6, 6, 4]), 0)
    assert [n.tolist() for n in co_clicked(sessions, n_known=5, n_items=7)] == [[0, 1], [2, 4]]


def test_the_item_map_only_grows() -> None:
    train, test = load_dataset("yoochoose_rsc15_100k")
    known = [str(i) for i in train.head_sessions(200).item_ids]
    known = list(dict.fromkeys(known))
    grown_map = grown_item_map(known, test.head_sessions(300))
    assert list(grown_map.ids[: len(known)]) == known
    fresh = set(test.head_sessions(300).item_ids) - set(known)
    assert set(grown_map.ids[len(known):]) == fresh and len(fresh) > 0


def test_the_replay_sample_stands_for_every_session_seen() -> None:
    rng = np.random.default_rng(0)
    parent = {"seen": 900, "sessions": [["old"]] * 90}
    merged = merged_replay(parent, [["new"]] * 100, keep=100, rng=rng)
    assert merged["seen"] == 1000 and len(merged["sessions"]) == 100
    assert merged["sessions"].count(["old"]) == 90  # 900 of the 1,000 sessions seen were old


def test_an_update_serves_items_the_parent_never_saw(three_model_artifact: Path, tmp_path: Path) -> None:
    _, test = load_dataset("yoochoose_rsc15_100k")
    new_log = test.head_sessions(400)
    parent_ids = json.loads((three_model_artifact / ITEM_IDS).read_text())
    held_out = test.head_sessions(450).sessions_as_ids()[400:]
    result = update(three_model_artifact, new_log, tmp_path / "next", budget=UpdateBudget(epochs=1),
                    cutoff={"until": float(new_log.times.max())}, held_out=held_out, settings=Settings())
    manifest = verify_artifact(result.directory, ("gru4rec", "narm", "dien"))
    item_ids = json.loads((result.directory / ITEM_IDS).read_text())
    assert item_ids[: len(parent_ids)] == parent_ids and result.new_items == len(item_ids) - len(parent_ids) > 0
    assert manifest["lineage"] == {"kind": "incremental", "parent": verify_artifact(three_model_artifact)["version"],
                                   "clicks": {"until": float(new_log.times.max())}}
    assert all(entry["n_items"] == len(item_ids) for entry in manifest["models"].values())
    replay = json.loads((result.directory / REPLAY).read_text())
    assert replay["seen"] == json.loads((three_model_artifact / REPLAY).read_text())["seen"] + result.new_sessions
    metrics = json.loads((result.directory / "metrics.json").read_text())
    assert metrics["served"]["pipelines"]["gru4rec"]["policy"] in ("keep_seen", "exclude_seen")

    new_items = item_ids[len(parent_ids):]
    for pipeline in ("gru4rec", "narm", "gru4rec+dien"):
        scorer = Scorer(result.directory, pipeline=pipeline)
        assert scorer.index_of(new_items[0]) == len(parent_ids)
        assert suggested_items(scorer, new_log.sessions_as_ids()[:50]) & set(new_items), pipeline


def suggested_items(scorer: Scorer, sessions: list[list[str]]) -> set[str]:
    """Every item the served path suggests along `sessions`, click by click, as the worker would."""
    recommender = SessionRecommender.from_settings(scorer, Settings())
    table: dict[bytes, SessionState] = {}
    found: set[str] = set()
    for number, items in enumerate(sessions):
        for offset, item in enumerate(items):
            click = SourcedClick(Click(f"s{number}", item, 0.0), partition=0, offset=offset)
            result = recommender.recommend([click], table, now=0.0)
            table.update(result.states)
            found.update(result.suggestions[0].items)
    return found


@pytest.mark.parametrize("dien", ["keep", "fine-tune"])
def test_dien_is_kept_or_fine_tuned_as_the_budget_says(three_model_artifact: Path, tmp_path: Path, dien: str) -> None:
    _, test = load_dataset("yoochoose_rsc15_100k")
    new_log = test.head_sessions(300)
    result = update(three_model_artifact, new_log, tmp_path / "next", budget=UpdateBudget(epochs=1, dien=dien),
                    cutoff={})
    parent_ids = json.loads((three_model_artifact / ITEM_IDS).read_text())
    before, after = model_of(three_model_artifact, "dien"), model_of(result.directory, "dien")
    known = slice(0, len(parent_ids))
    unchanged = [torch.equal(before.state_dict()[name][known] if "item" in name else before.state_dict()[name],
                             tensor[known] if "item" in name else tensor)
                 for name, tensor in after.state_dict().items()]
    assert all(unchanged) if dien == "keep" else not all(unchanged)
    assert json.loads((result.directory / "metrics.json").read_text())["incremental"]["budget"]["dien"] == dien
    assert suggested_items(Scorer(result.directory, pipeline="gru4rec+dien"), new_log.sessions_as_ids()[:5])


def test_an_unknown_dien_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="dien must be one of keep, fine-tune"):
        UpdateBudget(dien="retrain")
