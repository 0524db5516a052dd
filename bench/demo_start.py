"""Seconds from `bash scripts/demo.sh` to the demo's first suggestion, on a set-up machine.

    PYTHONPATH=. python bench/demo_start.py [--runs 3]

Runs the demo script as a user would (set-up check included), into a fresh temporary artifact store (the
first version is trained every time, as on a first run), for one short round, and reads the time of the
first suggestion from the demo's own line; prints each run and the median.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import tempfile
import time

from stream_app.cli_help import HelpFormatter
from stream_app.settings import REPO_ROOT


def one_run(command: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ) | {"NEXTCLICK_ARTIFACT_DIR": tmp}
        started = time.monotonic()
        demo = subprocess.Popen(
            [*shlex.split(command), "--max-clicks", "300", "--rounds", "1", "--log-dir", tmp],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        first = None
        for line in demo.stdout:
            if first is None and line.startswith("first suggestion"):
                first = time.monotonic() - started
        if demo.wait() != 0 or first is None:
            raise SystemExit(f"the demo failed (status {demo.returncode})")
        return first


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench/demo_start.py", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="demo starts to time")
    parser.add_argument("--command", default="bash scripts/demo.sh",
                        help="how the demo is started (another Python: `PYTHON -m devtools.demo`)")
    args = parser.parse_args()
    runs = [one_run(args.command) for _ in range(args.runs)]
    print(f"seconds from `{args.command}` to the first suggestion: "
          + ", ".join(f"{run:.1f}" for run in runs) + f"; median {statistics.median(runs):.1f}")


if __name__ == "__main__":
    main()
