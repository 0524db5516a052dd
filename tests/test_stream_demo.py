"""The live demo runs end to end on a tiny artifact, stops on its own or on Ctrl-C, and leaves no process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream_app.settings import REPO_ROOT

pytestmark = pytest.mark.broker

CLICKS = 200


def demo_env(artifact: Path, tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("NEXTCLICK_")}
    # A quick model would be trained into NEXTCLICK_ARTIFACT_DIR: keep that out of the repository.
    return env | {"NEXTCLICK_SERVING_ARTIFACT_DIR": str(artifact), "NEXTCLICK_ARTIFACT_DIR": str(tmp_path)}


def demo_command(tmp_path: Path, *options: str) -> list[str]:
    return ["nice", "-n", "15", sys.executable, "-m", "devtools.demo", "--log-dir", str(tmp_path), *options]


def check_summary(output: str, clicks: int | None = None) -> None:
    """The summary has suggestions and a hit rate, and the broker and worker are gone."""
    assert "training a quick" not in output
    received, answered = map(int, re.search(r"suggestions received: (\d+) for (\d+) clicks", output).groups())
    sent = int(re.search(r"clicks sent: (\d+)", output).group(1))
    assert received >= answered > 0
    if clicks is not None:
        assert sent == answered == clicks
    hit_rate = float(re.search(r"hit-rate@20: ([0-9.]+) over (\d+)", output).group(1))
    assert 0.0 <= hit_rate <= 1.0
    for pid in map(int, re.search(r"broker pid (\d+) .* worker pid (\d+)", output).groups()):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_finite_demo_answers_every_click(artifact: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        demo_command(tmp_path, "--max-clicks", str(CLICKS), "--speedup", "6000"),
        cwd=REPO_ROOT,
        env=demo_env(artifact, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    check_summary(done.stdout, CLICKS)


def test_ctrl_c_stops_the_demo_cleanly(artifact: Path, tmp_path: Path) -> None:
    with (tmp_path / "progress.txt").open("w") as progress:
        demo = subprocess.Popen(
            demo_command(tmp_path),
            cwd=REPO_ROOT,
            env=demo_env(artifact, tmp_path),
            stdout=subprocess.PIPE,
            stderr=progress,
            text=True,
        )
    try:
        deadline = time.monotonic() + 60
        while not re.search(r"hit-rate@\d+ \d", (tmp_path / "progress.txt").read_text()):  # judged ones
            assert demo.poll() is None, "the demo ended before Ctrl-C"
            assert time.monotonic() < deadline, "no judged suggestion after 60 s"
            time.sleep(0.2)
        demo.send_signal(signal.SIGINT)
        output, _ = demo.communicate(timeout=60)
    finally:
        demo.kill()
    assert demo.returncode == 0
    check_summary(output)
