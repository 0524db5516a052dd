"""A config file's model table is read into that model's settings, or refused in one line that names the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.retrain import training_params


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
])
def test_an_unknown_setting_or_a_refused_value_ends_it_in_one_line(tmp_path: Path, table: str, refusal: str) -> None:
    path = config(tmp_path, table)
    with pytest.raises(SystemExit) as exit:
        training_params(table[1:table.index("]")], path)
    assert str(exit.value).startswith(f"{path}: {refusal}")
