"""A bench stopped with SIGTERM leaves none of its children running."""

import os
import signal
import subprocess
import sys
import time

from stream_app.settings import REPO_ROOT

PARENT = """
import sys, time
from devtools.embedded_broker import EmbeddedBroker
from devtools.stopping import unwind_on_sigterm
if sys.argv[1] == "unwind":
    unwind_on_sigterm()
with EmbeddedBroker() as broker:
    print(broker.pid, flush=True)
    time.sleep(60)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def broker_after_sigterm(mode: str) -> int:
    """Start a parent holding an embedded broker, SIGTERM the parent, and return the broker's pid."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, mode], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
                              env=os.environ | {"PYTHONPATH": str(REPO_ROOT)})
    broker_pid = int(parent.stdout.readline())
    parent.send_signal(signal.SIGTERM)
    parent.wait(timeout=30)
    return broker_pid


def test_sigterm_stops_the_children_with_unwinding():
    broker_pid = broker_after_sigterm("unwind")
    deadline = time.monotonic() + 10
    while alive(broker_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(broker_pid)


def test_without_it_a_sigterm_leaves_the_broker_running():
    """The case the module is for: the default SIGTERM skips the `with` block that stops the broker."""
    broker_pid = broker_after_sigterm("default")
    try:
        time.sleep(0.5)
        assert alive(broker_pid)
    finally:
        if alive(broker_pid):
            os.kill(broker_pid, signal.SIGKILL)
