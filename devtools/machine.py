"""The line every bench prints first: which machine, how loaded, which software, when (BENCHMARKS.md rows cite it)."""

from __future__ import annotations

import os
import platform
import time


def machine_line(*software: str) -> str:
    """`machine: ARCH, N CPUs, load average L, Python V[, software...]; DATE TIME`."""
    parts = [f"machine: {platform.machine()}", f"{os.cpu_count()} CPUs", f"load average {os.getloadavg()[0]:.2f}",
             f"Python {platform.python_version()}", *software]
    return ", ".join(parts) + f"; {time.strftime('%Y-%m-%d %H:%M')}"
