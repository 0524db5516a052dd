"""A config file's model table is read into that model's settings, or refused in one line that names the file: an
unknown setting, a value its settings' own rules refuse, or one out of its field's bounds (a negative learning rate
would train, away from the data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.retrain import build_parser, training_params


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "model.toml"
    path.write_text(text)
    return path


def test_a_table_sets_the_models_settings(tmp_path: Path) -> None:
    params = training_params("dien", config(tmp_path, '[dien]\nloss = "logloss"\nmlp = [64, 32]\n'))
    assert params.loss == "logloss" and params.mlp == (64, 32)


@pytest.mark.parametrize(("table", "refusal"), [
    ("[gru4rec]\nbogus = 3\n", "[gru4rec]: no setting bogus (known: batch_size,"),
    ('[dien]\nloss = "hinge"\n', "[dien]: loss must be 'softmax' or 'logloss', got 'hinge'"),
    ("[gru4rec]\nlearning_rate = -0.05\nlayers = [0]\n",
     "[gru4rec]: layers.0: Input should be greater than 0 (got 0);"
     " learning_rate: Input should be greater than or equal to 0 (got -0.05)"),
    ("[narm]\ndropout_embed = 1.0\n", "[narm]: dropout_embed: Input should be less than 1 (got 1.0)"),
    ("[stan]\nk = 0\n", "[stan]: k: Input should be greater than 0 (got 0)"),
    ('[dien]\nbatch_size = "many"\n', "[dien]: batch_size: Input should be a valid integer"),
])
def test_an_unknown_setting_or_a_refused_value_ends_it_in_one_line(tmp_path: Path, table: str, refusal: str) -> None:
    path = config(tmp_path, table)
    with pytest.raises(SystemExit) as exit:
        training_params(table[1:table.index("]")], path)
    assert str(exit.value).startswith(f"{path}: {refusal}")


def test_every_flag_reads_its_settings_type_whatever_its_default_looks_like() -> None:
    """A flag converts by the field's declared type, bounds stripped: `--gru4rec-learning-rate 1` is the float 1.0
    and `--dien-mlp 64,32` a tuple, not whatever type the default happens to have."""
    args = vars(build_parser().parse_args([
        "--gru4rec-learning-rate", "1", "--gru4rec-layers", "64/64", "--dien-mlp", "64,32", "--dien-refit", "no",
        "--narm-dropout-embed", "0", "--dien-activation", "prelu", "--dien-batch-size", "32",
    ]))
    assert args["gru4rec.learning_rate"] == 1.0 and isinstance(args["gru4rec.learning_rate"], float)
    assert args["gru4rec.layers"] == (64, 64) and args["dien.mlp"] == (64, 32) and args["dien.refit"] is False
    assert isinstance(args["narm.dropout_embed"], float) and args["dien.batch_size"] == 32
    assert args["dien.activation"] == "prelu"
