"""Every flag of every nextclick command line says what it does, with its default as one would type it."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from devtools import demo
from stream_app import artifacts, catalogue, settings
from stream_app.settings import REPO_ROOT

PARSERS = {"demo": demo.build_parser, "artifacts": artifacts.build_parser, "settings": settings.build_parser,
           "catalogue": catalogue.build_parser}
REPR = re.compile(r"\(default:\s+(\(|\[|'|None|\))|PosixPath")  # a tuple, list, str repr, None, blank or Path


def retrain_parser() -> argparse.ArgumentParser:
    pytest.importorskip("torch")
    from training import retrain

    return retrain.build_parser()


def every_parser(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from every_parser(sub)


@pytest.mark.parametrize("name", [*PARSERS, "retrain"])
def test_every_flag_has_help_and_a_readable_default(name: str) -> None:
    parser = retrain_parser() if name == "retrain" else PARSERS[name]()
    for each in every_parser(parser):
        for action in each._actions:
            assert action.help and action.help != argparse.SUPPRESS, f"{name}: {action.dest} has no help"
        text = each.format_help()
        assert not REPR.search(text), f"{name}: {REPR.search(text)[0]!r}"


def test_retrain_shows_choices_and_defaults_as_typed() -> None:
    text = retrain_parser().format_help()
    assert "--gru4rec-loss {bpr,top1,bpr-max,top1-max,cross-entropy}" in text
    assert re.search(r"--gru4rec-layers LAYERS\s+.*\(default: 512\)", text)
    assert re.search(r"--dien-mlp MLP\s+.*\(default: 200,80\)", text)
    assert re.search(r"--dien-categories CATEGORIES\s+.*\(default: \"\" \(none\)\)", text, re.S)


def test_stream_app_help_describes_nextclick() -> None:
    for command in ([], ["worker"]):
        shown = subprocess.run([sys.executable, "-m", "stream_app", *command, "--help"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True, timeout=120).stdout
        assert "nextclick" in shown and "NEXTCLICK_" in shown
    top = subprocess.run([sys.executable, "-m", "stream_app", "--help"], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True, timeout=120).stdout
    for where in ("python -m stream_app worker", "python -m stream_app.artifacts", "python -m stream_app.catalogue",
                  "python -m devtools.demo",
                  "python -m training.retrain", "python -m stream_app.settings"):
        assert where in top
    assert "--loglevel" in top  # faust's own options are still there
