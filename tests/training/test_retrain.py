"""The ONNX serving graph gives what the torch model gives, on real sessions, step after step."""

import json
import pickle
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.export import export_gru4rec
from stream_app.inference.artifact_format import sha256_of
from stream_app.settings import REPO_ROOT
from tests.real_slices import yoochoose_slice
from training.retrain import main as retrain
from training.trainers.gru4rec import GRU4RecTraining, train_gru4rec

pytestmark = pytest.mark.training  # every test here runs training.retrain

TOP_K = 20


@pytest.fixture(scope="module")
def trained():
    train, test, _, popularity = yoochoose_slice()
    params = GRU4RecTraining(layers=(48, 48), batch_size=32, n_sample=128, n_epochs=1)
    model, _ = train_gru4rec(train, popularity, params, progress=False)
    return model, test


def test_onnx_step_matches_torch_on_real_sessions(trained, tmp_path):
    model, test = trained
    session = ort.InferenceSession(str(export_gru4rec(model, tmp_path / "g.onnx", top_k=TOP_K)))
    for batch in (1, 7):  # the batch dimension is dynamic
        sessions = [test.items[test.offsets[s]:test.offsets[s + 1]] for s in range(batch)]
        steps = min(len(s) for s in sessions)
        hidden = np.zeros((model.n_layers, batch, model.hidden_size), dtype=np.float32)
        torch_hidden = [torch.zeros(batch, model.hidden_size) for _ in range(model.n_layers)]
        for t in range(steps):  # feed each step's hidden state back, as the worker does
            items = np.array([s[t] for s in sessions], dtype=np.int64)
            top_items, top_scores, hidden = session.run(None, {"item": items, "hidden": hidden})
            with torch.no_grad():
                scores, torch_hidden = model(torch.from_numpy(items), torch_hidden)
            expected_scores, expected_items = torch.topk(scores, TOP_K)
            np.testing.assert_allclose(hidden, torch.stack(torch_hidden).numpy(), atol=1e-4)
            np.testing.assert_array_equal(top_items, expected_items.numpy())
            np.testing.assert_allclose(top_scores, expected_scores.numpy(), rtol=1e-4, atol=1e-4)


SMALL_RETRAIN = ["--dataset", "yoochoose_rsc15_100k", "--max-train-sessions", "1500", "--max-test-sessions", "200",
                 "--epochs", "1", "--gru4rec-layers", "16", "--gru4rec-batch-size", "16", "--gru4rec-n-sample", "32",
                 "--narm-hidden-size", "16", "--narm-embedding-dim", "16", "--dien-item-dim", "8",
                 "--dien-mlp", "16,8", "--dien-n-candidates", "10", "--dien-candidate-counts", "5",
                 "--top-k", "10", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def small_retrain(tmp_path_factory):
    return retrain([*SMALL_RETRAIN, "--out", str(tmp_path_factory.mktemp("retrain") / "artifact")])


def test_retrain_trains_all_three_models_into_one_verifiable_artifact(small_retrain):
    out = small_retrain
    manifest = json.loads((out / "manifest.json").read_text())
    models = ("gru4rec", "narm", "dien")
    expected_files = {"item_ids.json", "popularity.npy", "config.json", "metrics.json", "replay.json"}
    expected_files |= {f"{m}.{kind}" for m in models for kind in ("onnx", "pt")}
    expected_files |= {f"{m}_training_curve.png" for m in models}
    expected_files |= {f"{m}{end}" for m in ("gru4rec", "narm") for end in ("_query.onnx", ".faiss")}  # retrievers
    assert set(manifest["files"]) == expected_files
    assert all(manifest["models"][m]["weights"] == f"{m}.pt" for m in models)
    assert manifest["lineage"]["kind"] == "full" and manifest["lineage"]["parent"] is None
    for name, digest in manifest["files"].items():
        assert sha256_of(out / name) == digest
    assert set(manifest["models"]) == set(models)
    dien = manifest["models"]["dien"]
    assert (dien["kind"], dien["retriever"], dien["n_candidates"]) == ("reranker", "gru4rec", 10)
    assert dien["serving_candidates"] in (5, 10)  # chosen on sessions held out of DIEN's training

    metrics = json.loads((out / "metrics.json").read_text())
    # the baselines on the same predictions: popularity, item-kNN, V-SKNN, STAN
    assert set(metrics["results"]) == {"gru4rec", "narm", "gru4rec->dien", "popularity", "item_knn", "vsknn", "stan"}
    predictions = {row["n_predictions"] for row in metrics["results"].values()}
    assert len(predictions) == 1 and predictions.pop() > 0  # every row ranks the same test clicks
    assert 0.0 <= metrics["results"]["gru4rec->dien"]["recall@20"] <= 1.0
    # the re-ranker only reorders the top 10: its Recall@10 is the retriever's, whatever it learned
    assert metrics["results"]["gru4rec->dien"]["recall@10"] == metrics["results"]["gru4rec"]["recall@10"]
    assert 0.0 <= metrics["two_stage"]["dien_auc"] <= 1.0
    assert metrics["two_stage"]["serving_candidates"] == dien["serving_candidates"]
    assert set(metrics["two_stage"]["validation"]) == {"5", "10"}
    assert set(metrics["training"]) >= set(models)
    stages = [stage["name"] for stage in metrics["stages"]]  # where a retrain's time went, in run order
    assert stages[0] == "loading" and stages[-2:] == ["ONNX exports and training curves",
                                                    "served figures, keeping and excluding clicked items"]
    assert set(metrics["served"]["pipelines"]) == {"gru4rec", "narm", "gru4rec+dien"}
    assert stages.index("gru4rec training") < stages.index("narm training") < stages.index("dien training")
    assert stages.index("dien's training candidates (fold gru4rec training included)") < stages.index("dien training")
    assert all(stage["seconds"] >= 0 for stage in metrics["stages"])

    item_ids = json.loads((out / "item_ids.json").read_text())
    n_items = len(item_ids)
    assert n_items == len(np.load(out / "popularity.npy")) == manifest["models"]["gru4rec"]["n_items"]
    top_items, _, _ = ort.InferenceSession(str(out / "gru4rec.onnx")).run(
        None, {"item": np.array([0, 1]), "hidden": np.zeros((1, 2, 16), dtype=np.float32)})
    assert top_items.shape == (2, 10)
    top_items, _ = ort.InferenceSession(str(out / "narm.onnx")).run(
        None, {"items": np.array([[0, 1], [2, 0]]), "lengths": np.array([2, 1])})
    assert top_items.shape == (2, 10)
    max_len = manifest["models"]["dien"]["max_len"]
    [scores] = ort.InferenceSession(str(out / "dien.onnx")).run(
        None, {"items": np.zeros((3, max_len), dtype=np.int64), "lengths": np.ones(3, dtype=np.int64),
               "candidates": np.arange(30).reshape(3, 10) % n_items})
    assert scores.shape == (3, 10)


def test_the_reranker_trains_again_on_the_sessions_that_chose_its_candidate_count(small_retrain, tmp_path):
    """By default DIEN is trained again after the choice, on every stacked session: those it was validated on too."""
    out = retrain([*SMALL_RETRAIN, "--models", "gru4rec", "dien", "--no-baselines", "--dien-refit", "false",
                   "--out", str(tmp_path / "artifact")])
    refit, held = (json.loads((o / "metrics.json").read_text())["two_stage"] for o in (small_retrain, out))
    assert held["validation_sessions"] == refit["validation_sessions"] > 0
    assert refit["dien_training_sessions"] == held["dien_training_sessions"] + held["validation_sessions"]
    assert held["validation"] == refit["validation"]  # the same choice: made before the second training


def test_lanes_train_the_same_models_side_by_side(small_retrain, tmp_path):
    """Two lanes (worker processes) of one thread each train what a one-thread run trains one after another: the
    same figures and epoch losses to the last digit, and an artifact as complete."""
    out = retrain([*SMALL_RETRAIN, "--lanes", "2", "--out", str(tmp_path / "artifact")])
    one_lane, two_lanes = (json.loads((o / "metrics.json").read_text()) for o in (small_retrain, out))
    assert two_lanes["training"]["lanes"] == 2 and one_lane["training"]["lanes"] == 1
    assert two_lanes["results"] == one_lane["results"]
    assert two_lanes["two_stage"] == one_lane["two_stage"]
    for model in ("gru4rec", "narm", "dien"):
        losses = [[e["loss"] for e in run["training"][model]["epochs"]] for run in (one_lane, two_lanes)]
        assert losses[0] == losses[1]
    assert {s["name"] for s in two_lanes["stages"]} == {s["name"] for s in one_lane["stages"]}
    assert set(json.loads((out / "manifest.json").read_text())["files"]) == \
        set(json.loads((small_retrain / "manifest.json").read_text())["files"])


def test_warm_start_needs_one_lane():
    with pytest.raises(SystemExit, match="--lanes 1"):
        retrain([*SMALL_RETRAIN, "--lanes", "2", "--dien-retriever-warm-start-epochs", "1"])


def test_warm_started_retriever_continues_diens_fold_retriever_on_every_session(tmp_path):
    """The served GRU4Rec is the fold retriever (its epoch on the earlier 80 % of sessions) trained one more
    epoch on all of them, not a second model trained from scratch."""
    out = retrain([*SMALL_RETRAIN, "--models", "gru4rec", "dien", "--dien-retriever-warm-start-epochs", "1",
                   "--out", str(tmp_path / "artifact")])
    metrics = json.loads((out / "metrics.json").read_text())
    epochs = metrics["training"]["gru4rec"]["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert {metrics["training"][m]["matmul_precision"] for m in ("gru4rec", "dien")} == {"float32"}
    assert epochs[0]["events"] < 0.85 * epochs[1]["events"]  # the fold saw the earlier sessions, the next epoch all
    stages = [stage["name"] for stage in metrics["stages"]]
    assert stages.index("dien's training candidates (fold gru4rec training included)") \
        < stages.index("gru4rec training (continuing dien's fold retriever)") < stages.index("dien training")
    assert metrics["results"]["gru4rec->dien"]["n_predictions"] > 0


BAD_DATA = {  # file content (None: no file) -> what the one line says after "<file>: "
    "not_a_prefix": (pickle.dumps(([7, 7, 8], [[1, 2], [1], [5]], [3, 4, 6], [10.0, 9.0, 11.0])),
                     "sample 1: session '7': not a prefix of the session's longest sample (sample 0)"),
    "not_a_pickle": (b"\x80\x04\x95 not a pickle", "not a readable pickle"),
    "three_columns": (pickle.dumps(([[1]], [2], [0.0])), "got a tuple of 3"),
    "missing": (None, "no such file"),
}


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data_ends_the_command_with_one_line_and_status_2(tmp_path, case):
    """`python -m training.retrain` as a user runs it: a data error is one line on stderr, never a traceback."""
    content, message = BAD_DATA[case]
    bad = tmp_path / "bad.pkl"
    if content is not None:
        bad.write_bytes(content)
    run = subprocess.run([sys.executable, "-m", "training.retrain", "--train", str(bad), "--test", str(bad),
                          "--out", str(tmp_path / "out"), "--no-progress"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.splitlines()) == 1, run.stderr
    assert run.stderr.startswith("python -m training.retrain: error: ") and message in run.stderr
    assert "bad.pkl: " in run.stderr  # the file it is about
    assert not (tmp_path / "out").exists()
