"""docs/configuration.md documents every setting, exactly as `python -m stream_app.settings --markdown` prints it;
settings that do not fit together are refused."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

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


def test_places_for_new_items_need_the_catalogue_rules_and_a_share_between_0_and_1() -> None:
    assert Settings().new_items_share == 0.0
    assert Settings(new_items_share=0.1).new_items_share == 0.1
    assert Settings(new_items_share=0.0, catalogue_rules=False).new_items_share == 0.0
    for wrong in ({"new_items_share": 0.1, "catalogue_rules": False}, {"new_items_share": -0.1},
                  {"new_items_share": 1.5}):
        with pytest.raises(ValidationError):
            Settings(**wrong)
