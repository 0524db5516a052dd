"""The live demo: a first version serves at once, the retrained one takes over live through the store, the summary
accounts for every click; it stops on its own or on Ctrl-C, and leaves no process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream_app.release.store import ArtifactStore
from stream_app.settings import REPO_ROOT, Settings

pytestmark = pytest.mark.broker

CLICKS = 200
# The better version, tiny as well (its quality is not the point here): promoted whatever the gate says.
TINY_RETRAIN = ("--max-train-sessions 3000 --gru4rec-layers 32 --gru4rec-batch-size 64 --gru4rec-n-sample 256 "
                "--max-test-sessions 200 --threads 1 --force-promote")


def demo_env(tmp_path: Path, artifact: Path | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("NEXTCLICK_")}
    env |= {"NEXTCLICK_ARTIFACT_DIR": str(tmp_path / "store")}  # the store the demo pushes to, out of the repo
    return env | ({"NEXTCLICK_SERVING_ARTIFACT_DIR": str(artifact)} if artifact else {})


def demo_command(tmp_path: Path, *options: str) -> list[str]:
    return ["nice", "-n", "15", sys.executable, "-m", "devtools.demo", "--log-dir", str(tmp_path), *options]


def figures(output: str) -> dict[str, int]:
    """The summary's click accounting."""
    found = re.search(r"clicks: ([\d,]+) sent, ([\d,]+) .* never sent .*, ([\d,]+) answered by a suggestion", output)
    judged = re.search(r"judged by the worker: ([\d,]+) of the ([\d,]+) clicks sent with a next click", output)
    numbers = [int(text.replace(",", "")) for text in (*found.groups(), *judged.groups())]
    return dict(zip(("sent", "not_sent", "answered", "judged", "judgeable"), numbers))


def check_processes_gone(output: str) -> None:
    for pid in map(int, re.search(r"broker pid (\d+) .* worker pid (\d+)", output).groups()):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_the_demo_serves_a_first_version_then_swaps_to_the_retrained_one(tmp_path: Path) -> None:
    done = subprocess.run(
        demo_command(tmp_path, "--max-clicks", str(CLICKS), "--speedup", "6000", "--retrain-args", TINY_RETRAIN),
        cwd=REPO_ROOT, env=demo_env(tmp_path), capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    output = done.stdout
    assert "first suggestion" in output
    assert "ended: finished" in output and "better version: promoted" in output
    served = re.findall(r"(\d{8}T\d{6}Z) from", output.split("versions served:")[1].splitlines()[0])
    assert len(served) == 2  # the first version, then the retrained one, swapped in live
    counts = figures(output)
    assert counts["sent"] == counts["answered"] > CLICKS and counts["not_sent"] == 0
    assert counts["judged"] == counts["judgeable"]  # every suggestion with a next click was judged by the worker
    for version in served:  # live hit-rate beside the offline Recall@20, per version
        assert re.search(rf"{version}: live [0-9.]+ \([\d,]+ judged\), offline [0-9.]+", output)
    check_processes_gone(output)
    listed = subprocess.run([sys.executable, "-m", "stream_app.artifacts", "list"], cwd=REPO_ROOT,
                            env=demo_env(tmp_path), capture_output=True, text=True, check=True).stdout
    assert f"* {served[1]}" in listed and f"  {served[0]}" in listed  # both in the store the CLI lists


def test_with_follow_the_follower_updates_the_served_version(tmp_path: Path) -> None:
    done = subprocess.run(
        demo_command(tmp_path, "--max-clicks", "3000", "--speedup", "3000", "--rounds", "6", "--follow", "1500",
                     "--retrain-args", TINY_RETRAIN),
        cwd=REPO_ROOT, env=demo_env(tmp_path), capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "continuous training: an incremental update every 1,500 clicks" in done.stdout
    store = ArtifactStore.from_settings(Settings(artifact_dir=tmp_path / "store"))
    lineages = [store.manifest(version).get("lineage", {}) for version in store.versions()]
    assert any(lineage.get("kind") == "incremental" for lineage in lineages), lineages
    check_processes_gone(done.stdout)


def test_ctrl_c_stops_the_demo_and_says_what_was_never_sent(artifact: Path, tmp_path: Path) -> None:
    with (tmp_path / "progress.txt").open("w") as progress:
        demo = subprocess.Popen(demo_command(tmp_path), cwd=REPO_ROOT, env=demo_env(tmp_path, artifact),
                                stdout=subprocess.PIPE, stderr=progress, text=True)
    try:
        deadline = time.monotonic() + 60
        while not re.search(r"live 0?\.\d+ \([1-9]", (tmp_path / "progress.txt").read_text()):  # judged ones
            assert demo.poll() is None, "the demo ended before Ctrl-C"
            assert time.monotonic() < deadline, "no judged suggestion after 60 s"
            time.sleep(0.2)
        demo.send_signal(signal.SIGINT)
        output, _ = demo.communicate(timeout=60)
    finally:
        demo.kill()
    assert demo.returncode == 0
    assert "ended: interrupted" in output
    counts = figures(output)
    day = int(re.search(r"round\(s\) of ([\d,]+) clicks", output).group(1).replace(",", ""))
    assert counts["sent"] + counts["not_sent"] == day and counts["not_sent"] > 0
    assert counts["answered"] <= counts["sent"]
    check_processes_gone(output)
