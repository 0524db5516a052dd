"""The repository itself: no absolute path of a development machine in any tracked file.

Data, artifacts and scratch folders are found relative to the repo root or through NEXTCLICK_* settings;
a path like /work/shared/... works on one machine only. Container paths of the images (/home/nextclick,
/var/lib/nextclick) are the images' own and allowed.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from stream_app.settings import REPO_ROOT

# Where checkouts, homes and scratch live on the machines this project is developed on, and this one.
MACHINE_ROOTS = sorted({"/work/", "/root/", "/home/", "/Users/", "/tmp/pytest-", f"{Path.home()}/",
                        f"{REPO_ROOT.parent}/"})
ALLOWED = ("/home/nextclick",)


def test_no_tracked_file_names_an_absolute_path_of_a_machine() -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    pattern = re.compile("|".join(re.escape(root) for root in MACHINE_ROOTS))
    found = []
    this_file = Path(__file__).resolve().relative_to(REPO_ROOT).as_posix()  # names the roots to find them
    for name in filter(None, files.decode().split("\0")):
        path = REPO_ROOT / name
        if name == this_file or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:  # binary files (images) hold no paths we wrote
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if pattern.search(line) and not any(allowed in line for allowed in ALLOWED):
                found.append(f"{name}:{number}: {line.strip()[:120]}")
    assert not found, "\n".join(found)
