"""Where a measurement was made: the machine line every results file and benchmark states."""

from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["cpu_model", "machine"]


def cpu_model() -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` where there is one, else what :mod:`platform` says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "?"


def machine() -> str:
    """``"<CPU model>, <n> cores"``."""
    return f"{cpu_model()}, {os.cpu_count()} cores"
