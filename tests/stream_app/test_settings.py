"""docs/configuration.md documents every setting, exactly as `python -m stream_app.settings --markdown` prints it."""

from __future__ import annotations

import subprocess
import sys

from stream_app.settings import REPO_ROOT, Settings, markdown_table

CONFIGURATION = (REPO_ROOT / "docs" / "configuration.md").read_text()


def test_every_setting_appears_in_the_configuration_page() -> None:
    missing = [name for name in Settings.model_fields if f"`NEXTCLICK_{name.upper()}`" not in CONFIGURATION]
    assert not missing


def test_the_configuration_table_is_the_generated_one() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "stream_app.settings", "--markdown"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert printed.strip() == markdown_table()
    assert markdown_table() in CONFIGURATION, "regenerate it: python -m stream_app.settings --markdown"


def test_the_knn_pipeline_serves_under_the_catalogue_rules() -> None:
    assert Settings(serving_model="vsknn", catalogue_rules=True).catalogue_rules

