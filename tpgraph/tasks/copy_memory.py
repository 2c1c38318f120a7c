"""Copy-memory task (Arjovsky, Shah & Bengio, 2016).

The network sees ``M`` random symbols, then waits through a delay of blanks,
then sees a start-recall marker and must output the ``M`` symbols in order.
"""

from __future__ import annotations

import math

import numpy as np

from tpgraph.tasks.base import Task, check_int_option

__all__ = ["CopyMemoryTask"]


class CopyMemoryTask(Task):
    """Copy memory with delay ``T``.

    Vocabulary of ``k + 2`` tokens: symbols ``0 .. k-1``, blank ``k`` and
    start-recall marker ``k + 1``. Sequences have length ``T + 2M``.

    Input: ``M`` symbols drawn uniformly from ``0 .. k-1``, then ``T - 1``
    blanks, then the marker (at 0-based index ``T + M - 1``), then ``M``
    blanks.

    Labels: blank for the first ``T + M`` steps, then the ``M`` memorised
    symbols in order.

    Parameters
    ----------
    delay : int
        The delay ``T``, ``>= 1``.
    n_symbols : int, optional
        Number of distinct symbols ``k``, ``>= 1`` (default 8).
    n_memorise : int, optional
        Number of symbols to memorise ``M``, ``>= 1`` (default 10).

    Raises
    ------
    ConfigError
        If an option is not an integer (``bool`` is rejected) or is below
        its minimum; the message names the option, its value and the allowed
        values.

    Notes
    -----
    The memoryless baseline predicts blank for the first ``T + M`` steps
    (cost 0) and the uniform distribution over the ``k`` symbols for the last
    ``M`` steps (cost ``ln k`` each), giving a per-step cross-entropy of
    ``M ln k / (T + 2M)``.

    Examples
    --------
    >>> import numpy as np
    >>> task = CopyMemoryTask(delay=3, n_symbols=8, n_memorise=2)
    >>> inputs, labels = task.example(np.random.default_rng(0))
    >>> print(task.render(inputs, labels))  # doctest: +SKIP
    in : 65--*--
    out: -----65
    """

    name = "copy_memory"
    horizon = "delay"

    def __init__(self, delay: int, n_symbols: int = 8, n_memorise: int = 10):
        self._delay = check_int_option("delay", delay, 1, self.name)
        self._n_symbols = check_int_option("n_symbols", n_symbols, 1, self.name)
        self._n_memorise = check_int_option("n_memorise", n_memorise, 1, self.name)

    @property
    def delay(self) -> int:
        """int: The delay ``T``."""
        return self._delay

    @property
    def n_symbols(self) -> int:
        """int: Number of distinct symbols ``k``."""
        return self._n_symbols

    @property
    def n_memorise(self) -> int:
        """int: Number of symbols to memorise ``M``."""
        return self._n_memorise

    @property
    def length(self) -> int:
        """int: Sequence length ``T + 2M``."""
        return self._delay + 2 * self._n_memorise

    @property
    def n_in(self) -> int:
        """int: Vocabulary size ``k + 2``."""
        return self._n_symbols + 2

    @property
    def blank(self) -> int:
        """int: Blank token ``k``."""
        return self._n_symbols

    @property
    def marker(self) -> int:  # type: ignore[override]
        """int: Start-recall marker token ``k + 1``."""
        return self._n_symbols + 1

    @property
    def marker_index(self) -> int:
        """int: 0-based time step of the marker, ``T + M - 1``."""
        return self._delay + self._n_memorise - 1

    @property
    def baseline_loss(self) -> float:
        """float: Memoryless per-step cross-entropy ``M ln k / (T + 2M)``."""
        return self._n_memorise * math.log(self._n_symbols) / self.length

    def options(self) -> dict:
        """Constructor arguments.

        Returns
        -------
        dict
            ``{"delay": T, "n_symbols": k, "n_memorise": M}``.
        """
        return {
            "delay": self._delay,
            "n_symbols": self._n_symbols,
            "n_memorise": self._n_memorise,
        }

    def _draw(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        m = self._n_memorise
        symbols = rng.integers(0, self._n_symbols, size=(m, batch_size), dtype=np.int64)
        inputs = np.full((self.length, batch_size), self.blank, dtype=np.int64)
        inputs[:m] = symbols
        inputs[self.marker_index] = self.marker
        labels = np.full((self.length, batch_size), self.blank, dtype=np.int64)
        labels[self.length - m :] = symbols
        return inputs, labels
