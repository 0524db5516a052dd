"""An artifact whose graphs keep their weights beside them (`models.export.EXTERNAL_DATA_BYTES`, what a catalogue of
millions of items needs past protobuf's 2 GiB) serves what the single-file artifact serves, and is sealed alike."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from models import export
from models.checkpoint import load_checkpoint
from stream_app.inference.artifact_format import ArtifactError, verify_artifact, write_manifest
from stream_app.inference.scoring import Scorer
from tests.training.test_retrain import SMALL_RETRAIN
from training.retrain import main as retrain

pytestmark = pytest.mark.training


def test_graphs_with_data_files_serve_as_single_files_and_are_sealed(
    three_model_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    beside = tmp_path / "beside"
    shutil.copytree(three_model_artifact, beside)
    manifest = verify_artifact(beside, ["gru4rec", "narm", "dien"])
    models = {name: load_checkpoint(beside / entry["weights"]).model for name, entry in manifest["models"].items()}
    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 0)
    export.export_gru4rec(models["gru4rec"], beside / "gru4rec.onnx", top_k=manifest["models"]["gru4rec"]["top_k"])
    export.export_gru4rec_query(models["gru4rec"], beside / "gru4rec_query.onnx")
    export.export_narm(models["narm"], beside / "narm.onnx", top_k=manifest["models"]["narm"]["top_k"])
    export.export_narm_query(models["narm"], beside / "narm_query.onnx")
    export.export_dien(models["dien"], beside / "dien.onnx")
    write_manifest(beside, version=manifest["version"], code_version=manifest["code_version"],
                   models=manifest["models"], lineage=manifest.get("lineage"))
    sealed = verify_artifact(beside, ["gru4rec", "narm", "dien"])["files"]
    graphs = ("gru4rec.onnx", "gru4rec_query.onnx", "narm.onnx", "narm_query.onnx", "dien.onnx")
    assert {f"{graph}.data" for graph in graphs} <= set(sealed)

    windows = [[3, 1, 4, 1, 5, 9, 2, 6], [5], [3, 5], [8, 9, 7, 9]]
    for pipeline in ("gru4rec", "narm", "gru4rec+dien"):
        for index in ("exact", "ann"):
            served = []
            for artifact in (three_model_artifact, beside):
                scorer = Scorer(artifact, pipeline=pipeline, topk_index=index)
                hidden = scorer.rebuild_hidden([w[:-1] for w in windows]) if scorer.stateful else None
                served.append(scorer.score(np.array([w[-1] for w in windows]), hidden, windows))
            np.testing.assert_array_equal(served[1].top_items, served[0].top_items, err_msg=f"{pipeline} {index}")
            np.testing.assert_allclose(served[1].top_scores, served[0].top_scores, rtol=1e-6, atol=1e-6)

    data = beside / "gru4rec.onnx.data"
    data.write_bytes(data.read_bytes()[:-4])
    with pytest.raises(ArtifactError, match="gru4rec.onnx.data does not match its sha256"):
        Scorer(beside)


def test_a_retrain_writes_data_files_and_a_reused_retriever_takes_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 0)
    first = retrain([*SMALL_RETRAIN, "--models", "gru4rec", "--no-baselines", "--out", str(tmp_path / "first")])
    second = retrain([*SMALL_RETRAIN, "--models", "dien", "--retriever-artifact", str(first), "--no-baselines",
                      "--out", str(tmp_path / "second")])
    retriever = ("gru4rec.onnx.data", "gru4rec_query.onnx.data")
    assert set(retriever) <= set(verify_artifact(first)["files"])
    assert {*retriever, "dien.onnx.data"} <= set(verify_artifact(second, ["gru4rec", "dien"])["files"])
    for name in retriever:
        assert (second / name).read_bytes() == (first / name).read_bytes()
    scorer = Scorer(second, pipeline="gru4rec+dien")
    assert scorer.score(np.array([1, 2]), scorer.zero_hidden(2), [[1], [5, 2]]).top_items.shape == (2, 10)
