"""Memory: what a compiled graph will allocate, what the machine has, and refusing what cannot fit.

An engine's memory has two parts, both known before they are allocated:

*structure*
    the networkx declaration, its node objects and the compiled plan: about
    :data:`STRUCTURE_BYTES_PER_NODE` per node (measured on CPython 3.11 with
    ``tracemalloc`` and the resident size: 1.5-2.0 kB per node of the SRN at
    its peak during compilation, rounded up for the allocator's overhead);
*buffers*
    per batch size, the preallocated arrays of :mod:`tpgraph.buffers`, whose
    shapes the plan fixes (:func:`tpgraph.buffers.buffer_bytes`, exact).

:func:`check_memory` compares an estimate with a limit and raises
:class:`~tpgraph.errors.MemoryLimitError` naming both, before anything is
allocated. The limit is, in this order: an explicit ``memory_limit`` (an
engine's, an SRN's, the config's ``protocol.memory_limit``), the environment
variable :data:`MEMORY_ENV`, or the memory available on this machine now
(``MemAvailable`` of ``/proc/meminfo``, lowered to a cgroup's limit when the
process runs under one; ``os.sysconf`` where there is no ``/proc``). A limit of
``"off"`` checks nothing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Mapping

from .errors import ConfigError, MemoryLimitError

__all__ = ["STRUCTURE_BYTES_PER_NODE", "MEMORY_ENV", "MemoryEstimate", "parse_bytes", "format_bytes",
           "available_memory", "memory_limit", "check_memory"]

#: Bytes of declaration, node objects and plan per graph node (see the module docstring).
STRUCTURE_BYTES_PER_NODE = 2500

#: Environment variable holding the default memory limit (``"8G"``, ``"512MiB"``, ``"off"``, bytes).
MEMORY_ENV = "TPGRAPH_MEMORY_LIMIT"

_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_OFF = ("off", "unlimited")


def parse_bytes(value, what: str = "memory limit") -> int | None:
    """A size in bytes from ``value``: an int, or a string like ``"8G"``, ``"1.5GiB"``, ``"512M"``, ``"2e9"``.

    Units are binary (``K`` = 1024 bytes, ``G`` = 2^30 bytes; ``KB``,
    ``KiB`` mean the same). ``"off"`` or ``"unlimited"`` return None (no
    limit).

    Raises
    ------
    ConfigError
        naming ``what`` when ``value`` is not a size of at least one byte.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a size like '8G' or a number of bytes, got {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    elif isinstance(value, str):
        text = value.strip().lower()
        if text in _OFF:
            return None
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?)(?:i?b)?", text)
        if m is None:
            raise ConfigError(f"{what} must be a size like '8G', '512M' or a number of bytes (or 'off'), "
                              f"got {value!r}")
        number, unit = float(m.group(1)), m.group(2)
    else:
        raise ConfigError(f"{what} must be a size like '8G' or a number of bytes, got {value!r}")
    size = number * _UNITS[unit]
    if not size >= 1 or size != size or size == float("inf"):
        raise ConfigError(f"{what} must be at least one byte, got {value!r}")
    return int(size)


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``; ``3 * 2**30`` -> ``"3.0 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup (v2, then v1) memory limit; None without one."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as fh:
                text = fh.read().strip()
            if text == "max":
                return None
            limit = int(text)
            with open(usage_file) as fh:
                usage = int(fh.read().strip())
        except (OSError, ValueError):
            continue
        if limit >= 2**60:  # v1 writes "no limit" as a huge number
            return None
        return max(limit - usage, 0)
    return None


def available_memory() -> int | None:
    """Bytes of memory available to this process now; None if the system does not say.

    ``MemAvailable`` of ``/proc/meminfo`` (what can be allocated without
    swapping), lowered to the room left under a cgroup limit; elsewhere the
    free physical pages of ``os.sysconf``.
    """
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            avail = None
    room = _cgroup_room()
    if room is not None:
        avail = room if avail is None else min(avail, room)
    return avail


def memory_limit(limit=None) -> tuple[int | None, str]:
    """The limit that applies and where it comes from: ``(bytes or None, description)``.

    ``limit``: an explicit size (see :func:`parse_bytes`), ``"off"``, or None
    for the default (:data:`MEMORY_ENV`, else the available memory).
    """
    if limit is not None:
        return parse_bytes(limit, "memory_limit"), "the memory_limit given"
    env = os.environ.get(MEMORY_ENV)
    if env:
        return parse_bytes(env, f"${MEMORY_ENV}"), f"${MEMORY_ENV}"
    return available_memory(), "the memory available on this machine"


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes that something will allocate: ``buffers`` by dtype name, and ``structure`` (graph and plan).

    Estimates add (``a + b``); ``str()`` reads like ``"1.2 GiB (float32
    1.1 GiB, int64 62.5 MiB, graph and plan 48.8 MiB)"``.
    """

    buffers: Mapping[str, int] = field(default_factory=dict)
    structure: int = 0

    @property
    def total(self) -> int:
        """All bytes: buffers of every dtype plus the structure."""
        return int(sum(self.buffers.values())) + int(self.structure)

    def __add__(self, other: "MemoryEstimate") -> "MemoryEstimate":
        merged = dict(self.buffers)
        for k, v in other.buffers.items():
            merged[k] = merged.get(k, 0) + v
        return MemoryEstimate(merged, self.structure + other.structure)

    def scaled(self, k: int) -> "MemoryEstimate":
        """``k`` times this estimate (``k`` copies)."""
        return MemoryEstimate({d: k * v for d, v in self.buffers.items()}, k * self.structure)

    def __str__(self) -> str:
        parts = [f"{d} {format_bytes(v)}" for d, v in sorted(self.buffers.items(), key=lambda kv: -kv[1]) if v]
        if self.structure:
            parts.append(f"graph and plan {format_bytes(self.structure)}")
        return f"{format_bytes(self.total)} ({', '.join(parts) or 'nothing'})"


def check_memory(estimate: MemoryEstimate, what: str, limit=None, hint: str = "") -> None:
    """Refuse ``estimate`` if it exceeds the limit (see :func:`memory_limit`), before anything is allocated.

    Parameters
    ----------
    estimate : MemoryEstimate
    what : str
        What would be allocated, with its sizes (``"the SRN at length 10000020,
        batch size 20"``); starts the message.
    limit : int, str or None
        An explicit limit; None: :data:`MEMORY_ENV` or the available memory.
    hint : str
        How to ask for less, appended to the message.

    Raises
    ------
    MemoryLimitError
        naming ``what``, the estimate and the limit.
    """
    cap, source = memory_limit(limit)
    if cap is None or estimate.total <= cap:
        return
    raise MemoryLimitError(
        f"{what} would allocate about {estimate}, more than the limit of {format_bytes(cap)} "
        f"({source}); nothing was allocated. {hint + ' ' if hint else ''}"
        f"Set another limit with memory_limit (protocol.memory_limit, --memory-limit) or ${MEMORY_ENV}, "
        f"'off' for none.", estimate=estimate.total, limit=cap)
