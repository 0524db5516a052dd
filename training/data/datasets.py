"""The data sets in the shared data folder, by name, each as (train, test) click logs.

Trainer, evaluator and benchmarks name a data set instead of spelling out file names and reader options;
`custom_dataset` gives a user's own files (event logs or SR-GNN-style pickles) the same shape.
"""

from __future__ import annotations

import argparse
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from stream_app.settings import get_settings
from training.data.click_log import ClickLog, DataError
from training.data.pickles import looks_like_pickle, read_session_pickle, read_srgnn_test, read_srgnn_train
from training.data.readers import read_event_log


@dataclass(frozen=True)
class DatasetSpec:
    """Files (relative to the data folder, or absolute) and the readers for their formats."""

    name: str
    train: str
    test: str
    read_train: Callable[[Path], ClickLog]
    read_test: Callable[[Path], ClickLog]
    validation: tuple[str, str] | None = None  # (train, test) files of the split that tunes hyperparameters


_RSC15 = "yoochoose_rsc15_100k/yoochoose-clicks-100k"


def _srgnn(folder: str) -> DatasetSpec:
    return DatasetSpec(folder, f"{folder}/all_train_seq.txt.gz", f"{folder}/test.txt.gz",
                       read_srgnn_train, read_srgnn_test)


DATASETS: dict[str, DatasetSpec] = {
    "yoochoose_rsc15_100k": DatasetSpec(
        "yoochoose_rsc15_100k", f"{_RSC15}_train_full.txt.gz", f"{_RSC15}_test.txt.gz", read_event_log, read_event_log,
        validation=(f"{_RSC15}_train_tr.txt.gz", f"{_RSC15}_train_valid.txt.gz"),
    ),
    "diginetica_srgnn": _srgnn("diginetica_srgnn"),
    "yoochoose1_64_srgnn": _srgnn("yoochoose1_64_srgnn"),
}


def add_column_arguments(group: argparse._ArgumentGroup) -> None:
    """The flags that name a click log file's columns (`--train/--test` of retrain and the prequential replay)."""
    group.add_argument("--session-key", default="SessionId", help="--train/--test: the session id column")
    group.add_argument("--item-key", default="ItemId", help="--train/--test: the item id column")
    group.add_argument("--time-key", default="Time", help="--train/--test: the click time column (Unix seconds)")


def dataset_names() -> list[str]:
    return list(DATASETS)


def custom_dataset(train_path, test_path, **read_event_log_kwargs) -> DatasetSpec:
    """A user's own train/test files, for `load_dataset`. Each file is told apart by its content: an SR-GNN-style
    pickle goes to `read_session_pickle`, anything else is an event log for `read_event_log` (with the kwargs)."""
    read_log = partial(read_event_log, **read_event_log_kwargs)

    def reader(id_prefix: str) -> Callable[[Path], ClickLog]:
        def read(path: Path) -> ClickLog:
            try:
                return read_session_pickle(path, id_prefix) if looks_like_pickle(path) else read_log(path)
            except (OSError, EOFError, UnicodeDecodeError, zlib.error) as e:  # e.g. a binary file, a broken .gz
                raise DataError(f"{path.name}: neither a pickle nor a readable click log: {e}") from e
        return read

    train, test = (Path(p).expanduser().absolute() for p in (train_path, test_path))
    return DatasetSpec(f"custom:{train.name}", str(train), str(test), reader(""), reader("test-"))


@dataclass(frozen=True)
class DatasetFiles:
    """A data set's two files, checked to exist, read one at a time: a hyper-parameter search reads the training
    log and must not read the test log before it ends (`training.tuning.search`)."""

    spec: DatasetSpec
    train: Path
    test: Path

    def read_train(self) -> ClickLog:
        return self.spec.read_train(self.train)

    def read_test(self) -> ClickLog:
        return self.spec.read_test(self.test)


def dataset_files(name: str | DatasetSpec, data_dir: Path | None = None, validation: bool = False) -> DatasetFiles:
    """The (train, test) files of a registered data set (or a `custom_dataset`), both checked to exist before
    either is read. With validation=True: the train part's own (train, validation) split."""
    spec = name if isinstance(name, DatasetSpec) else DATASETS.get(name)
    if spec is None:
        raise KeyError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    data_dir = Path(data_dir) if data_dir is not None else get_settings().data_dir
    if validation and spec.validation is None:
        raise ValueError(f"{spec.name}: this split ships no validation part; hold out part of its train set")
    train_file, test_file = spec.validation if validation else (spec.train, spec.test)
    paths = [data_dir / f for f in (train_file, test_file)]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file; set NEXTCLICK_DATA_DIR to the folder holding the data "
                                    f"sets (now {data_dir})")
    return DatasetFiles(spec, *paths)


def load_dataset(name: str | DatasetSpec, data_dir: Path | None = None,
                 validation: bool = False) -> tuple[ClickLog, ClickLog]:
    """(train, test) logs of a registered data set (or a `custom_dataset`). With validation=True: the
    train part's own (train, validation) split, so that tuning never sees the test set."""
    files = dataset_files(name, data_dir, validation)
    return files.read_train(), files.read_test()
