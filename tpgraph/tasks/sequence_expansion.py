"""Sequence-expansion task: repeat every input symbol twice."""

from __future__ import annotations

import numpy as np

from tpgraph.tasks.base import Task, check_int_option

__all__ = ["SequenceExpansionTask"]


class SequenceExpansionTask(Task):
    """Sequence expansion with length ``T``.

    Vocabulary of ``k + 1`` tokens: symbols ``0 .. k-1`` and blank ``k``.

    Input of length ``T``: the first ``ceil(T / 2)`` positions hold symbols
    drawn uniformly from ``0 .. k-1``, the rest are blanks.

    Labels: each input symbol repeated twice, cut to length ``T``, so the
    labels never contain the blank.

    Parameters
    ----------
    length : int
        Sequence length ``T``, ``>= 2``.
    n_symbols : int, optional
        Number of distinct symbols ``k``, ``>= 1`` (default 4).

    Raises
    ------
    ConfigError
        If an option is not an integer (``bool`` is rejected) or is below
        its minimum; the message names the option, its value and the allowed
        values.

    Notes
    -----
    :attr:`baseline_loss` is ``None``. In copy memory most labels are
    blanks that any predictor gets for free, and the rest are symbols that a
    memoryless model can only guess, which gives one clear closed-form
    reference. Here every label is a symbol and label ``t`` is input symbol
    ``t // 2``, so it equals the current input only at ``t = 0``; how well a
    memoryless predictor does then hinges on what it is assumed to know (the
    time step or not, the current token or not), and no single value serves
    as the reference. Loss curves for this task are therefore plotted
    without a baseline line.

    Examples
    --------
    >>> import numpy as np
    >>> task = SequenceExpansionTask(length=6)
    >>> inputs, labels = task.example(np.random.default_rng(0))
    >>> print(task.render(inputs, labels))  # doctest: +SKIP
    in : 322---
    out: 332222
    """

    name = "sequence_expansion"

    def __init__(self, length: int, n_symbols: int = 4):
        self._length = check_int_option("length", length, 2, self.name)
        self._n_symbols = check_int_option("n_symbols", n_symbols, 1, self.name)

    @property
    def n_symbols(self) -> int:
        """int: Number of distinct symbols ``k``."""
        return self._n_symbols

    @property
    def n_source(self) -> int:
        """int: Number of input symbols ``ceil(T / 2)``."""
        return (self._length + 1) // 2

    @property
    def length(self) -> int:
        """int: Sequence length ``T``."""
        return self._length

    @property
    def n_in(self) -> int:
        """int: Vocabulary size ``k + 1``."""
        return self._n_symbols + 1

    @property
    def blank(self) -> int:
        """int: Blank token ``k``."""
        return self._n_symbols

    @property
    def baseline_loss(self) -> None:
        """None: The task has no memoryless baseline (see Notes of the class)."""
        return None

    def options(self) -> dict:
        """Constructor arguments.

        Returns
        -------
        dict
            ``{"length": T, "n_symbols": k}``.
        """
        return {"length": self._length, "n_symbols": self._n_symbols}

    def _draw(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        half = self.n_source
        symbols = rng.integers(0, self._n_symbols, size=(half, batch_size), dtype=np.int64)
        inputs = np.full((self._length, batch_size), self.blank, dtype=np.int64)
        inputs[:half] = symbols
        labels = np.repeat(symbols, 2, axis=0)[: self._length]
        return inputs, np.ascontiguousarray(labels)
