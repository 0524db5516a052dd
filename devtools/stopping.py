"""A bench or the demo stopped with SIGTERM (`kill`, `timeout`) stops what it started, as after a Ctrl-C.

Their brokers, workers and loops run in sessions of their own, so that a Ctrl-C reaches only the parent, which
then stops them in order (its `with` and `finally` blocks). Python's default SIGTERM ends the parent at once,
without those blocks, and leaves the children running: a worker polling a broker that is gone takes a share of
the cores the next measurement runs on.
"""

from __future__ import annotations

import signal


def unwind_on_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt in the main thread, as a Ctrl-C does: every block unwinds."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
