"""`python -m stream_app.catalogue` against the embedded broker: set, show, load and remove write what workers read;
bad input is one line on stderr and exit status 2, and nothing is written."""

from __future__ import annotations

import csv
import gzip
import itertools
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from devtools.embedded_broker import EmbeddedBroker
from stream_app.settings import REPO_ROOT, get_settings

CATEGORIES = get_settings().data_dir / "diginetica" / "product-categories.csv.gz"


def real_items(count: int) -> list[tuple[str, str]]:
    """The first `count` (item id, category id) rows of Diginetica's product categories."""
    with gzip.open(CATEGORIES, "rt") as lines:
        return [(row["itemId"], row["categoryId"])
                for row in itertools.islice(csv.DictReader(lines, delimiter=";"), count)]


@pytest.fixture
def command(broker: EmbeddedBroker):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTCLICK_")}
    env |= {"NEXTCLICK_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "NEXTCLICK_CATALOGUE_TOPIC": f"catalogue-{uuid.uuid4().hex[:8]}"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "stream_app.catalogue", *args], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    return run


def shown(command, item: str) -> dict | None:
    done = command("show", item)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["record"]


def test_set_show_and_remove_an_item(command) -> None:
    (item, category), *_ = real_items(1)
    assert shown(command, item) is None
    refused = command("set", item, "--category", category)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--available" in refused.stderr
    assert command("set", item, "--available", "true", "--category", category).returncode == 0
    assert command("set", item, "--available", "false").returncode == 0  # the category stays
    assert shown(command, item) == {"available": False, "category": category}
    assert command("remove", item).returncode == 0
    assert shown(command, item) is None


def test_load_writes_every_row_or_none(command, tmp_path: Path) -> None:
    items = real_items(50)
    good = tmp_path / "catalogue.csv"
    with good.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["item_id", "available", "blocked", "category", "new", "price_band"])
        for number, (item, category) in enumerate(items):
            writer.writerow([item, "no" if number % 10 == 0 else "yes", "true" if number == 1 else "", category,
                             "", "low"])
    done = command("load", str(good))
    assert done.returncode == 0 and "50 records" in done.stdout, done.stderr
    assert shown(command, items[0][0]) == {"available": False, "category": items[0][1], "price_band": "low"}
    assert shown(command, items[1][0])["blocked"] is True
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,available\n111,true\n222,maybe\n")
    refused = command("load", str(bad))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "bad.csv:3" in refused.stderr
    assert shown(command, "111") is None  # nothing of the file was written


def test_bad_input_is_one_line_and_status_2(command) -> None:
    for args in (["set", "1", "--available", "perhaps"], ["frobnicate"], ["load", "/nonexistent.csv"],
                 ["set", "1", "--available", "true", "--category", ""]):
        done = command(*args)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), args
