"""Click logs from TSV/CSV (optionally .gz) and Parquet files, and item categories, checked row by row."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd

from training.data.click_log import ClickLog, DataError, ItemMap

_SEPARATORS = ("\t", ";", ",")
_TIME_SCALE = {"s": 1, "ms": 1000}  # divisor to seconds
_PARQUET_SUFFIXES = (".parquet", ".pq")


def read_event_log(path, *, session_key="SessionId", item_key="ItemId", time_key="Time", time_unit="s",
                   date_key=None, sep=None) -> ClickLog:
    """Read a TSV/CSV (optionally .gz) or Parquet click log into a `ClickLog`.

    Without `date_key`, `time_key` is an absolute time and each session's rows must already be in time
    order in the file (a row going back in time means a broken export, so it raises). With `date_key`
    (raw Diginetica: `timeframe` = ms since session start, `eventdate` = day), the time is the session's
    first day plus the offset, and rows are put in time order within their session: that format stores
    them in no particular order, and a session crossing midnight keeps its real duration.
    """
    path = Path(path)
    if time_unit not in _TIME_SCALE:
        raise ValueError(f"time_unit must be one of {list(_TIME_SCALE)}, not {time_unit!r}")
    frame = _read_table(path, sep)
    wanted = [session_key, item_key, time_key] + ([date_key] if date_key else [])
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise DataError(f"{path.name}: missing column(s) {', '.join(missing)}; columns present: "
                        f"{', '.join(map(str, frame.columns))}")
    if frame.empty:
        raise DataError(f"{path.name}: no data rows")
    sessions = _ids(frame[session_key], path, "session")
    items = _ids(frame[item_key], path, "item")
    times = pd.to_numeric(frame[time_key], errors="coerce").to_numpy(np.float64, na_value=np.nan)
    _check_parsed(np.isfinite(times), frame[time_key], path, "time")
    times = times / _TIME_SCALE[time_unit]
    codes, _ = pd.factorize(sessions)  # session number by first appearance: the stable tie-break
    if date_key:
        day = pd.to_datetime(frame[date_key], format="%Y-%m-%d", errors="coerce")
        _check_parsed(day.notna().to_numpy(), frame[date_key], path, "date")
        day_s = (day - pd.Timestamp(0)).dt.total_seconds().to_numpy()
        times = times + pd.Series(day_s).groupby(codes).transform("min").to_numpy()
    first_time = pd.Series(times).groupby(codes).min().to_numpy()
    keys = (times, codes, first_time[codes]) if date_key else (codes, first_time[codes])
    order = np.lexsort(keys)  # stable: file order survives wherever the keys tie
    sessions, items, times = sessions[order], items[order], times[order]
    back = np.flatnonzero((sessions[1:] == sessions[:-1]) & (times[1:] < times[:-1]))
    if len(back):
        k = back[np.argmin(order[back + 1])]  # report the earliest offending row of the file
        raise DataError(f"{path.name}: row {order[k + 1] + 1}: time goes backwards within session "
                        f"'{sessions[k]}' ({times[k + 1]} < {times[k]})")
    return ClickLog(sessions, items, times, str(path))


def _read_table(path: Path, sep: str | None) -> pd.DataFrame:
    """All columns as strings (ids must never become ints or floats); Parquet keeps its types."""
    if path.suffix in _PARQUET_SUFFIXES:
        return pd.read_parquet(path)
    if sep is None:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt") as f:
            header = f.readline()
        sep = max(_SEPARATORS, key=header.count)
    try:
        # Blank lines stay rows so that row numbers in messages match the file.
        return pd.read_csv(path, sep=sep, dtype=str, skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{path.name}: {e}") from e


def _ids(column: pd.Series, path: Path, what: str) -> np.ndarray:
    text = column.astype(str)
    bad = column.isna().to_numpy() | (text.str.strip() == "").to_numpy()
    if bad.any():
        raise DataError(f"{path.name}: row {np.argmax(bad) + 1}: missing {what} id")
    return text.to_numpy(dtype=object)


def _check_parsed(ok: np.ndarray, column: pd.Series, path: Path, what: str) -> None:
    if not ok.all():
        row = np.argmin(ok)
        raise DataError(f"{path.name}: row {row + 1}: unparsable {what} {column.iloc[row]!r}")


def read_item_categories(path, item_map: ItemMap) -> np.ndarray:
    """int64 [n_items]: each item's category as an index 1..C, 0 for items the file does not list.
    The file (CSV/TSV/Parquet, .gz) has an item-id column first and a category column second, with a header
    (Diginetica's product-categories.csv: `itemId;categoryId`)."""
    path = Path(path)
    frame = _read_table(path, None)
    if frame.shape[1] < 2:
        raise DataError(f"{path.name}: expected an item column and a category column, got {list(frame.columns)}")
    items, categories = _ids(frame.iloc[:, 0], path, "item"), _ids(frame.iloc[:, 1], path, "category")
    known = item_map.encode(items)
    codes = pd.factorize(categories[known >= 0])[0] + 1
    item_categories = np.zeros(len(item_map), dtype=np.int64)
    item_categories[known[known >= 0]] = codes
    return item_categories
