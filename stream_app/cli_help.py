"""How every nextclick command line shows its flags: the module docstring as written, and each flag's
default as a reader would type it (`512,256`, `runs/demo`, `yes`), never a Python repr (`(512,)`,
`PosixPath(...)`) and never a blank or a `None`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from stream_app.settings import REPO_ROOT


def readable(value: object) -> str:
    """A default as it would be written on the command line or in a config file."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Path):
        return os.path.relpath(value, REPO_ROOT) if value.is_absolute() else str(value)
    if isinstance(value, tuple):
        return ",".join(map(readable, value))
    if isinstance(value, list):
        return " ".join(map(readable, value))
    if value == "":
        return '"" (none)'
    return str(value)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout; appends ` (default: X)` to every flag that has a default worth
    showing (not None, not a store_true's False) and does not show it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, argparse.SUPPRESS) and not isinstance(
            action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction)
        )
        if shown and "%(default)" not in text and action.option_strings:
            text += f" (default: {readable(action.default).replace('%', '%%')})"
        return text
