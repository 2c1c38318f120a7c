"""The adding problem (Hochreiter & Schmidhuber, 1997), as used by Martens &
Sutskever (2011) and by Manchev & Spratling's target propagation through time.

Definition (0-based time steps, sequences of length ``T``)
    Two real input channels. Channel 0 holds values ``v_t`` drawn i.i.d.
    uniformly from ``[0, 1)`` at every step. Channel 1 is a marker channel:
    zero except at two steps ``p_1 < p_2``, where it is one. ``p_i`` is drawn
    uniformly from the integers ``floor(a_i T) <= p_i < floor(b_i T)`` of
    range ``i`` of the option ``positions = [[a_1, b_1], [a_2, b_2]]``.
    The default ``[[0, 0.1], [0.1, 0.5]]`` is the convention of the TPTT and
    Martens & Sutskever generators: the first marker in the first tenth of
    the sequence, the second in the rest of its first half (``T = 100``:
    ``0 <= p_1 <= 9``, ``10 <= p_2 <= 49``). Hochreiter & Schmidhuber put
    the first among the first 10 steps and the second among the first
    ``T/2 - 1``; other papers differ again, hence the option.

    The target, given at the last step only (many-to-one), is the mean of
    the two marked values ``(v_{p_1} + v_{p_2}) / 2`` (a regression:
    squared-error loss on a linear output).

Baseline
    The constant prediction 0.5 (the target's mean) has mean squared error
    ``Var((u_1 + u_2) / 2) = (1/12) / 2 = 1/24 ~ 0.0417`` for ``u_i ~
    U[0, 1)``: the usual reference, and the best a memoryless model can do.

Accuracy
    A sequence counts as right when ``|prediction - target| < tolerance``
    (option, default 0.04, the threshold of Hochreiter & Schmidhuber). A run
    counts as having solved the task when its validation accuracy reaches
    ``success_acc`` (option, default 0.99).

Unlike the TPTT generator, which draws every batch's length from
``[T, 1.1 T)``, all sequences here have length ``T`` exactly (an unrolled
graph is compiled per length).
"""

from __future__ import annotations

import numpy as np

from tpgraph.errors import ConfigError
from tpgraph.tasks.base import Task, check_float_option, check_int_option, check_positions, position_steps

__all__ = ["AddingTask"]

#: The default marker ranges, fractions of the length: the TPTT / Martens & Sutskever convention.
DEFAULT_POSITIONS = ((0.0, 0.1), (0.1, 0.5))


class AddingTask(Task):
    """The adding problem of length ``T`` (see the module docstring for the definition).

    Parameters
    ----------
    length : int
        Sequence length ``T``, ``>= 2`` (and long enough for every marker
        range to hold a step: ``T >= 10`` with the default ranges).
    positions : list of two [start, end] pairs, optional
        The marker ranges as fractions of ``T`` (default ``[[0, 0.1], [0.1, 0.5]]``);
        range ``i`` allows the steps ``floor(start T) <= p < floor(end T)``.
    tolerance : float, optional
        Largest absolute error (exclusive) of a sequence that counts as right
        (default 0.04).
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
    >>> task = AddingTask(length=20)
    >>> x, y = task.batch(np.random.default_rng(0), 4)
    >>> x.shape, y.shape, task.n_in, task.n_out
    ((20, 4, 2), (1, 4, 1), 2, 1)
    >>> round(task.baseline_loss, 4)
    0.0417
    """

    name = "adding"
    input_kind = "real"
    output_kind = "regression"
    many_to_one = True

    def __init__(self, length: int, positions=DEFAULT_POSITIONS, tolerance: float = 0.04,
                 success_acc: float = 0.99):
        self._length = check_int_option("length", length, 2, self.name)
        self._positions = check_positions("positions", positions, self._length, 2, self.name)
        self._tolerance = check_float_option("tolerance", tolerance, above=0.0, owner=self.name)
        self._success_acc = check_float_option("success_acc", success_acc, above=0.0, maximum=1.0,
                                               owner=self.name)
        self._steps = position_steps(self._positions, self._length)

    @property
    def length(self) -> int:
        """int: Sequence length ``T``."""
        return self._length

    @property
    def n_in(self) -> int:
        """int: Two input channels: the values and the markers."""
        return 2

    @property
    def n_out(self) -> int:
        """int: One real output, the mean of the two marked values."""
        return 1

    @property
    def positions(self) -> tuple:
        """tuple: The marker ranges ``((a_1, b_1), (a_2, b_2))`` as fractions of the length."""
        return self._positions

    @property
    def marker_steps(self) -> list[tuple[int, int]]:
        """list: The half-open 0-based step ranges ``[(lo_1, hi_1), (lo_2, hi_2)]`` of the markers."""
        return list(self._steps)

    @property
    def tolerance(self) -> float:
        """float: Largest absolute error (exclusive) of a right sequence."""
        return self._tolerance

    @property
    def success_accuracy(self) -> float:
        """float: Validation accuracy at which the task counts as solved."""
        return self._success_acc

    @property
    def baseline_loss(self) -> float:
        """float: ``1/24``, the mean squared error of the constant prediction 0.5."""
        return 1.0 / 24.0

    def options(self) -> dict:
        """Constructor arguments.

        Returns
        -------
        dict
            ``{"length": T, "positions": [[a_1, b_1], [a_2, b_2]], "tolerance": ..., "success_acc": ...}``.
        """
        return {"length": self._length, "positions": [list(p) for p in self._positions],
                "tolerance": self._tolerance, "success_acc": self._success_acc}

    def _draw(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        (lo1, hi1), (lo2, hi2) = self._steps
        values = rng.uniform(0.0, 1.0, size=(self._length, batch_size))
        p1 = rng.integers(lo1, hi1, size=batch_size)
        p2 = rng.integers(lo2, hi2, size=batch_size)
        cols = np.arange(batch_size)
        inputs = np.zeros((self._length, batch_size, 2))
        inputs[:, :, 0] = values
        inputs[p1, cols, 1] = 1.0
        inputs[p2, cols, 1] = 1.0
        targets = 0.5 * (values[p1, cols] + values[p2, cols])
        return inputs, targets.reshape(1, batch_size, 1)

    def render(self, inputs: np.ndarray, labels: np.ndarray) -> str:
        """Format one sequence: the values (marked ones in brackets) and the target.

        Parameters
        ----------
        inputs : numpy.ndarray
            ``[length, 2]`` (as from :meth:`example`).
        labels : numpy.ndarray
            ``[1, 1]``, or anything of one element.

        Returns
        -------
        str
            ``"in : .12 [.93] .40 ...\\nout: 0.6650"``.
        """
        x = np.asarray(inputs, dtype=float)
        y = np.asarray(labels, dtype=float)
        if x.shape != (self._length, 2):
            raise ConfigError(f"{self.name}.render: 'inputs' must have shape ({self._length}, 2), got {x.shape}")
        if y.size != 1:
            raise ConfigError(f"{self.name}.render: 'labels' must hold one target, got shape {y.shape}")
        parts = [f"[{v:.2f}]" if m else f"{v:.2f}" for v, m in zip(x[:, 0], x[:, 1] > 0.5)]
        return f"in : {' '.join(parts)}\nout: {float(y.reshape(-1)[0]):.4f}"
