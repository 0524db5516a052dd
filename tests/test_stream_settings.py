"""The README documents every setting, exactly as `python -m stream_app.settings --markdown` prints it."""

from __future__ import annotations

import subprocess
import sys

from stream_app.settings import REPO_ROOT, Settings, markdown_table

README = (REPO_ROOT / "README.md").read_text()


def test_every_setting_appears_in_the_readme() -> None:
    missing = [name for name in Settings.model_fields if f"`NEXTCLICK_{name.upper()}`" not in README]
    assert not missing


def test_the_readme_table_is_the_generated_one() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "stream_app.settings", "--markdown"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert printed.strip() == markdown_table()
    assert markdown_table() in README, "regenerate it: python -m stream_app.settings --markdown"
