"""The training device: choosing it, failing early without a GPU, and the GPU's code paths run on the CPU."""

import pytest
import torch

from stream_app.settings import get_settings
from tests.real_slices import yoochoose_slice
from training import retrain
from training.data.session_batches import _host_steps, _on_device
from training.trainers import device
from training.trainers.device import module_device, training_device
from training.trainers.gru4rec import GRU4RecTrainer, GRU4RecTraining, train_gru4rec


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_is_the_cpu_without_a_gpu(no_gpu):
    assert training_device("auto") == torch.device("cpu")
    assert training_device("cpu") == torch.device("cpu")


@pytest.mark.training
def test_cuda_without_a_gpu_fails_before_the_data_is_read(no_gpu, monkeypatch):
    def no_loading(args):
        raise AssertionError("the data was read before the device was checked")

    monkeypatch.setattr(retrain, "open_logs", no_loading)
    with pytest.raises(SystemExit, match="--device cuda: torch .* sees no CUDA GPU"):
        retrain.main(["--dataset", "yoochoose_rsc15_100k", "--models", "gru4rec", "--device", "cuda"])


def test_the_setting_is_the_flags_default(monkeypatch):
    monkeypatch.setenv("NEXTCLICK_TRAIN_DEVICE", "auto")
    get_settings.cache_clear()
    try:
        assert retrain.build_parser().parse_args([]).device == "auto"
        monkeypatch.delenv("NEXTCLICK_TRAIN_DEVICE")
        get_settings.cache_clear()
        assert retrain.build_parser().parse_args([]).device == "cpu"
    finally:
        get_settings.cache_clear()
    with pytest.raises(SystemExit):
        retrain.build_parser().parse_args(["--device", "tpu"])


def test_steps_staged_for_a_device_are_the_host_steps():
    """A GPU gets an epoch's steps in one copy per field, each step a view: the same steps, field by field."""
    train, _, _, _ = yoochoose_slice()
    host = list(_host_steps(train, 32))
    staged = list(_on_device(list(_host_steps(train, 32)), torch.device("cpu")))
    assert len(staged) == len(host) > 0
    assert any(s.keep is not None for s in host) and any(s.reset is not None for s in host)
    for a, b in zip(host, staged):
        for name in ("items", "targets", "keep", "reset"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None and y is None) or torch.equal(x, y)
        assert (a.positions == b.positions).all()


@pytest.mark.training
def test_an_explicit_cpu_trains_the_default_weights():
    """device=cpu is the path every CPU retrain takes: the model, its optimiser state and samples where they were."""
    train, _, _, popularity = yoochoose_slice()
    params = GRU4RecTraining(layers=(32,), batch_size=32, n_sample=64, n_epochs=1, matmul_precision="bfloat16")
    default = GRU4RecTrainer(popularity, params).fit(train, 1, progress=False)
    explicit = GRU4RecTrainer(popularity, params, torch.device("cpu")).fit(train, 1, progress=False)
    assert module_device(explicit) == torch.device("cpu")
    for a, b in zip(default.parameters(), explicit.parameters()):
        assert torch.equal(a, b)


@pytest.mark.training
def test_bfloat16_on_a_cpu_without_it_trains_in_float32(monkeypatch):
    """An AVX2-only CPU emulates bfloat16 products many times slower than float32: the config's choice gives way."""
    monkeypatch.setattr(device, "cpu_bfloat16_matmuls", lambda: False)
    train, _, _, popularity = yoochoose_slice()
    small = dict(layers=(32,), batch_size=32, n_sample=64, n_epochs=1)
    fp32_model, _ = train_gru4rec(train, popularity, GRU4RecTraining(**small), progress=False)
    with pytest.warns(UserWarning, match="this CPU has no bfloat16"):
        model, history = train_gru4rec(train, popularity, GRU4RecTraining(matmul_precision="bfloat16", **small),
                                       progress=False)
    assert history.matmul_precision == "float32"  # what metrics.json records as run
    for a, b in zip(fp32_model.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_cpu_bfloat16_probe_is_where_torch_keeps_it():
    """`cpu_bfloat16_matmuls` asks a torch op that is not public API: an upgrade that moves it fails here first."""
    assert isinstance(device.cpu_bfloat16_matmuls(), bool)
