"""How every nextclick command line shows its flags: the module docstring as written, and each flag's
default as a reader would type it (`512,256`, `runs/demo`, `yes`), never a Python repr (`(512,)`,
`PosixPath(...)`) and never a blank or a `None`; and how the operators' commands refuse bad input (one line).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError

from stream_app.settings import REPO_ROOT, Settings, get_settings


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


class OneLineErrors(argparse.ArgumentParser):
    """Usage errors in one line (exit status 2), like every other refusal of the operators' commands."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def settings_or_none() -> Settings | None:
    """The settings in effect; None, after one line on stderr, when a NEXTCLICK_* variable is invalid."""
    try:
        return get_settings()
    except ValidationError as error:
        wrong = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        print(f"error: invalid settings: {wrong}", file=sys.stderr)
        return None
