"""Bad data ends a command as a bad flag does: one line on stderr, exit status 2, no traceback.

Every command that reads click logs reads them inside `exits_on_data_errors(parser)` (`training.retrain`; the
prequential replay and the follower likewise), so a user's broken file gives `<prog>: error: <file>: <what>`.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

from training.data.click_log import DataError

DATA_ERROR_EXIT_STATUS = 2  # argparse's own for a usage error

DATA_ERRORS = (DataError, OSError)  # OSError: a file that is missing or cannot be read (the message names it)


@contextmanager
def exits_on_data_errors(parser: argparse.ArgumentParser) -> Iterator[None]:
    """Turn a `DataError` (or an unreadable file) raised inside into `parser.exit(2, ...)` with a one-line
    message; anything else propagates as it is."""
    try:
        yield
    except DATA_ERRORS as e:
        parser.exit(DATA_ERROR_EXIT_STATUS, f"{parser.prog}: error: {' '.join(str(e).split())}\n")
