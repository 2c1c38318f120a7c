"""The temporal-order problem (Hochreiter & Schmidhuber, 1997), as used by
Martens & Sutskever (2011) and by Manchev & Spratling's target propagation
through time.

Definition (0-based time steps, sequences of length ``T``)
    A vocabulary of six tokens: the relevant symbols ``X = 0`` and ``Y = 1``
    and the distractors ``a, b, c, d = 2, 3, 4, 5``. Every step holds a
    distractor drawn uniformly from ``{a, b, c, d}``, except ``k`` steps
    ``p_1 < ... < p_k`` (``k = bits``, 2 or 3) that hold a relevant symbol
    drawn uniformly from ``{X, Y}``. ``p_i`` is drawn uniformly from the
    integers ``floor(a_i T) <= p_i < floor(b_i T)`` of range ``i`` of the
    option ``positions``. Defaults (the ranges given for TPTT):

    * ``bits = 2``: ``[[0.1, 0.2], [0.4, 0.5]]`` (``T = 100``: steps 10..19 and 40..49);
    * ``bits = 3``: ``[[0.1, 0.2], [0.3, 0.4], [0.6, 0.7]]``.

    (The Pascanu generator that TPTT ships puts the second symbol at
    ``[0.5, 0.6)``; pass ``positions`` for that or any other convention.)

    The label, given at the last step only (many-to-one), is the order of
    the relevant symbols read as a binary number, ``X = 0``, ``Y = 1``, the
    first symbol the most significant bit: for ``bits = 2`` the classes are
    ``XX = 0, XY = 1, YX = 2, YY = 3``; for ``bits = 3`` there are 8.

Baseline
    Chance: the uniform prediction over the ``2^k`` classes, cross-entropy
    ``ln 2^k`` (``ln 4`` or ``ln 8``), the best a model that ignores the
    relevant symbols can do (the classes are equally likely).

Accuracy
    The fraction of sequences whose class is right; a run counts as having
    solved the task when its validation accuracy reaches ``success_acc``
    (option, default 0.99).
"""

from __future__ import annotations

import math

import numpy as np

from tpgraph.errors import ConfigError
from tpgraph.tasks.base import Task, check_float_option, check_int_option, check_positions, position_steps

__all__ = ["TemporalOrderTask"]

#: The default ranges of the relevant symbols, fractions of the length, by number of bits.
DEFAULT_POSITIONS = {
    2: ((0.1, 0.2), (0.4, 0.5)),
    3: ((0.1, 0.2), (0.3, 0.4), (0.6, 0.7)),
}

SYMBOLS = "XYabcd"


class TemporalOrderTask(Task):
    """The temporal-order problem of length ``T`` (see the module docstring for the definition).

    Parameters
    ----------
    length : int
        Sequence length ``T``, ``>= 2`` (long enough for every range to hold
        a step: ``T >= 10`` with the default ranges).
    bits : int, optional
        Number of relevant symbols ``k`` (default 2; the 3-bit variant: 3).
        Any ``k >= 1`` works when ``positions`` is given; defaults exist for
        2 and 3.
    positions : list of k [start, end] pairs, optional
        The ranges of the relevant symbols as fractions of ``T`` (default:
        see the module docstring).
    success_acc : float, optional
        Validation accuracy in ``(0, 1]`` at which the task counts as solved
        (default 0.99).

    Raises
    ------
    ConfigError
        If an option has the wrong type or range; the message names it.

    Examples
    --------
    >>> import numpy as np
    >>> task = TemporalOrderTask(length=20)
    >>> x, y = task.batch(np.random.default_rng(0), 4)
    >>> x.shape, y.shape, task.n_in, task.n_out
    ((20, 4), (1, 4), 6, 4)
    >>> print(task.render(*task.example(np.random.default_rng(1))))  # doctest: +SKIP
    in : dacXdbcbaYccdabdcbab
    out: XY (class 1)
    """

    name = "temporal_order"
    input_kind = "index"
    output_kind = "class"
    many_to_one = True

    def __init__(self, length: int, bits: int = 2, positions=None, success_acc: float = 0.99):
        self._length = check_int_option("length", length, 2, self.name)
        self._bits = check_int_option("bits", bits, 1, self.name)
        if positions is None:
            if self._bits not in DEFAULT_POSITIONS:
                raise ConfigError(f"{self.name}: option 'bits' = {self._bits} has no default 'positions' "
                                  f"(defaults exist for bits {sorted(DEFAULT_POSITIONS)}); give 'positions', "
                                  f"{self._bits} [start, end] pairs")
            positions = DEFAULT_POSITIONS[self._bits]
        self._positions = check_positions("positions", positions, self._length, self._bits, self.name)
        self._success_acc = check_float_option("success_acc", success_acc, above=0.0, maximum=1.0,
                                               owner=self.name)
        self._steps = position_steps(self._positions, self._length)

    @property
    def length(self) -> int:
        """int: Sequence length ``T``."""
        return self._length

    @property
    def bits(self) -> int:
        """int: Number of relevant symbols ``k``."""
        return self._bits

    @property
    def n_in(self) -> int:
        """int: Six tokens: X, Y and the distractors a, b, c, d."""
        return 6

    @property
    def n_out(self) -> int:
        """int: ``2^k`` classes."""
        return 2 ** self._bits

    @property
    def positions(self) -> tuple:
        """tuple: The ranges of the relevant symbols as fractions of the length."""
        return self._positions

    @property
    def symbol_steps(self) -> list[tuple[int, int]]:
        """list: The half-open 0-based step ranges of the relevant symbols."""
        return list(self._steps)

    @property
    def success_accuracy(self) -> float:
        """float: Validation accuracy at which the task counts as solved."""
        return self._success_acc

    @property
    def baseline_loss(self) -> float:
        """float: ``ln 2^k``, the cross-entropy of guessing the class."""
        return self._bits * math.log(2.0)

    def options(self) -> dict:
        """Constructor arguments.

        Returns
        -------
        dict
            ``{"length": T, "bits": k, "positions": [[a_1, b_1], ...], "success_acc": ...}``.
        """
        return {"length": self._length, "bits": self._bits, "positions": [list(p) for p in self._positions],
                "success_acc": self._success_acc}

    def _draw(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        inputs = rng.integers(2, 6, size=(self._length, batch_size), dtype=np.int64)
        cols = np.arange(batch_size)
        label = np.zeros(batch_size, dtype=np.int64)
        for lo, hi in self._steps:
            p = rng.integers(lo, hi, size=batch_size)
            v = rng.integers(0, 2, size=batch_size, dtype=np.int64)
            inputs[p, cols] = v
            label = 2 * label + v
        return inputs, label.reshape(1, batch_size)

    def render(self, inputs: np.ndarray, labels: np.ndarray) -> str:
        """Format one sequence as its symbols and the class (as the relevant symbols' order).

        Parameters
        ----------
        inputs : numpy.ndarray
            1-D integer array of length :attr:`length`.
        labels : numpy.ndarray
            One class (a 1-element array, as from :meth:`example`).

        Returns
        -------
        str
            ``"in : dacXdbcbaYcc...\\nout: XY (class 1)"``.
        """
        x = np.asarray(inputs)
        y = np.asarray(labels).reshape(-1)
        if x.shape != (self._length,) or not np.issubdtype(x.dtype, np.integer) or x.min() < 0 or x.max() > 5:
            raise ConfigError(f"{self.name}.render: 'inputs' must be {self._length} tokens in 0..5, "
                              f"got shape {x.shape}")
        if y.size != 1 or not 0 <= int(y[0]) < self.n_out:
            raise ConfigError(f"{self.name}.render: 'labels' must be one class in 0..{self.n_out - 1}, got {y}")
        c = int(y[0])
        order = "".join("XY"[(c >> (self._bits - 1 - i)) & 1] for i in range(self._bits))
        return f"in : {''.join(SYMBOLS[t] for t in x.tolist())}\nout: {order} (class {c})"
