"""Errors raised by tpgraph.

Every error a user can cause is a :class:`TPGraphError` (or a subclass) whose
message names the culprit: the node, edge, parameter group, config key or
file, and says what was expected.
"""


class TPGraphError(Exception):
    """Base class of every error tpgraph raises for bad input."""


class GraphError(TPGraphError):
    """A graph declaration is invalid (cycle, shape mismatch, missing input, ...)."""


class ConfigError(TPGraphError):
    """A configuration file or option is invalid."""


class DataError(TPGraphError):
    """A batch fed to the engine does not fit the graph (shape, dtype, range, NaN)."""


class CheckpointError(TPGraphError):
    """A checkpoint or weight file cannot be loaded safely."""


class MemoryLimitError(TPGraphError):
    """What a graph, batch size or run would allocate exceeds the memory limit (checked before allocating).

    ``estimate`` and ``limit`` are in bytes (see :mod:`tpgraph.memory`).
    """

    def __init__(self, message: str, estimate: int | None = None, limit: int | None = None):
        super().__init__(message)
        self.estimate = estimate
        self.limit = limit


class DivergenceError(TPGraphError):
    """Training produced a non-finite loss, target or weight."""

    def __init__(self, message: str, step: int | None = None, quantity: str | None = None):
        super().__init__(message)
        self.step = step
        self.quantity = quantity
