"""Where onnxruntime scores (NEXTCLICK_INFERENCE_PROVIDER): both branches of the choice, with onnxruntime's list of
providers made to say CUDA or not; the real sessions of this machine's onnxruntime, including its quiet fallback to
the CPU when CUDA is asked for and cannot start; and the worker refusing to start on `cuda` without CUDA."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from stream_app.inference.providers import CPU, CUDA, ProviderUnavailable, inference_session, requested_providers
from stream_app.inference.scoring import Scorer
from stream_app.settings import REPO_ROOT

WITHOUT_CUDA = ["AzureExecutionProvider", CPU]  # the CPU build of onnxruntime
WITH_CUDA = ["TensorrtExecutionProvider", CUDA, CPU]  # onnxruntime-gpu

needs_a_build_without_cuda = pytest.mark.skipif(
    CUDA in ort.get_available_providers(), reason="this onnxruntime has CUDA (the GPU check covers that side)"
)


@pytest.fixture
def cuda_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime says it has CUDA; this machine's build still cannot start it."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: WITH_CUDA)


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smallest graph: y = x."""
    onnx = pytest.importorskip("onnx")
    helper = onnx.helper
    model = helper.make_model(
        helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None])]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
    )
    path = tmp_path_factory.mktemp("graph") / "identity.onnx"
    onnx.save(model, path)
    return path


def test_auto_and_cuda_ask_for_cuda_first_where_onnxruntime_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: WITH_CUDA)
    assert requested_providers("auto") == requested_providers("cuda") == [CUDA, CPU]
    assert requested_providers("cpu") == [CPU]


def test_without_cuda_auto_takes_the_cpu_and_cuda_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: WITHOUT_CUDA)
    assert requested_providers("auto") == requested_providers("cpu") == [CPU]
    with pytest.raises(ProviderUnavailable, match="no CUDA provider.*AzureExecutionProvider.*install onnxruntime-gpu"):
        requested_providers("cuda")


@needs_a_build_without_cuda
def test_auto_scores_on_the_cpu_here(graph: Path) -> None:
    session = inference_session(graph, ort.SessionOptions(), "auto")
    assert session.get_providers() == [CPU]
    np.testing.assert_array_equal(session.run(["y"], {"x": np.ones(3, np.float32)})[0], np.ones(3))


@needs_a_build_without_cuda
def test_a_session_onnxruntime_moved_to_the_cpu_is_refused_under_cuda_and_logged_under_auto(
        graph: Path, cuda_listed: None, caplog: pytest.LogCaptureFixture) -> None:
    """onnxruntime creates a session asked for CUDA that cannot start on the CPU instead, with only a warning."""
    with pytest.warns(UserWarning, match=CUDA), pytest.raises(ProviderUnavailable, match="could not start CUDA"):
        inference_session(graph, ort.SessionOptions(), "cuda")
    with pytest.warns(UserWarning, match=CUDA), caplog.at_level(logging.WARNING, "stream_app.inference.providers"):
        session = inference_session(graph, ort.SessionOptions(), "auto")
    assert session.get_providers() == [CPU]
    assert "identity.onnx: onnxruntime has CUDA but could not start it" in caplog.text


@pytest.mark.filterwarnings(f"ignore:Specified provider '{CUDA}'")
def test_under_cuda_onnxruntime_may_not_move_a_failing_session_to_the_cpu(
        graph: Path, cuda_listed: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime retries a run that failed in CUDA on the CPU, unless its fallback is off (`_enable_fallback`)."""
    monkeypatch.setattr(ort.InferenceSession, "get_providers", lambda session: [CUDA, CPU])
    assert inference_session(graph, ort.SessionOptions(), "cuda")._enable_fallback is False
    assert inference_session(graph, ort.SessionOptions(), "auto")._enable_fallback is True


def test_the_scorer_scores_where_its_setting_says(artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Scorer(artifact, provider="cpu").provider == CPU
    monkeypatch.setattr(ort, "get_available_providers", lambda: WITHOUT_CUDA)
    assert Scorer(artifact).provider == CPU
    with pytest.raises(ProviderUnavailable):
        Scorer(artifact, provider="cuda")


@needs_a_build_without_cuda
def test_a_worker_told_to_use_cuda_without_it_stops_at_once_saying_why(tmp_path: Path) -> None:
    env = os.environ | {"NEXTCLICK_INFERENCE_PROVIDER": "cuda", "NEXTCLICK_TABLE_DIR": str(tmp_path / "tables")}
    started = subprocess.run([sys.executable, "-m", "stream_app", "worker"], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 1
    assert "nextclick worker: NEXTCLICK_INFERENCE_PROVIDER=cuda, but this onnxruntime has no CUDA provider" in (
        started.stderr)
    assert not (tmp_path / "tables").exists()
