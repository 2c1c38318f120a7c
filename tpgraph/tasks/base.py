"""Common machinery of the sequence tasks.

Every task produces integer token sequences in *time-major* layout: an
array of shape ``[length, batch_size]`` whose entry ``[t, b]`` is the token
fed (or expected) at time step ``t`` of sequence ``b``. The model turns the
input indices into one-hot vectors itself (by a gather), so the tasks never
build one-hot arrays.

This module holds the abstract :class:`Task`, the option validators shared by
the concrete tasks, and the two accuracy measures :func:`step_accuracy` and
:func:`sequence_accuracy`.
"""

from __future__ import annotations

import abc

import numbers

import numpy as np

from tpgraph.errors import ConfigError

__all__ = [
    "Task",
    "check_int_option",
    "sequence_accuracy",
    "step_accuracy",
]


def _is_int(value: object) -> bool:
    """Whether ``value`` is an integer for option purposes (``bool`` is not)."""
    if isinstance(value, (bool, np.bool_)):
        return False
    return isinstance(value, numbers.Integral)


def check_int_option(name: str, value: object, minimum: int, owner: str = "task") -> int:
    """Validate an integer option and return it as a Python ``int``.

    Parameters
    ----------
    name : str
        Name of the option, used in the error message.
    value : object
        The value given by the caller.
    minimum : int
        Smallest allowed value.
    owner : str, optional
        What the option belongs to (a task name or a method), used in the
        error message.

    Returns
    -------
    int
        ``value`` converted to a plain Python ``int``.

    Raises
    ------
    ConfigError
        If ``value`` is not an integer (``bool`` counts as not an integer) or
        is smaller than ``minimum``. The message names the option, the value
        given and the allowed values.
    """
    if not _is_int(value):
        raise ConfigError(
            f"{owner}: option {name!r} must be an integer >= {minimum}, "
            f"got {value!r} of type {type(value).__name__}"
        )
    value = int(value)  # type: ignore[arg-type]
    if value < minimum:
        raise ConfigError(
            f"{owner}: option {name!r} must be an integer >= {minimum}, got {value!r}"
        )
    return value


def _check_rng(rng: object, owner: str) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(
            f"{owner}: argument 'rng' must be a numpy.random.Generator "
            f"(e.g. numpy.random.default_rng(seed)), got {type(rng).__name__}"
        )
    return rng


def _check_pair(pred: object, labels: object, owner: str) -> tuple[np.ndarray, np.ndarray]:
    pred_arr = np.asarray(pred)
    labels_arr = np.asarray(labels)
    if pred_arr.shape != labels_arr.shape:
        raise ConfigError(
            f"{owner}: 'pred' and 'labels' must have equal shapes, "
            f"got pred shape {pred_arr.shape} and labels shape {labels_arr.shape}"
        )
    if pred_arr.ndim != 2:
        raise ConfigError(
            f"{owner}: 'pred' and 'labels' must be time-major 2-D arrays [length, batch], "
            f"got {pred_arr.ndim}-D arrays of shape {pred_arr.shape}"
        )
    if pred_arr.size == 0:
        raise ConfigError(
            f"{owner}: 'pred' and 'labels' must be non-empty, got shape {pred_arr.shape}"
        )
    return pred_arr, labels_arr


def step_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of time steps whose predicted class equals the label.

    Parameters
    ----------
    pred : numpy.ndarray
        Predicted classes, integer array of shape ``[length, batch]``
        (time-major).
    labels : numpy.ndarray
        Target classes, same shape as ``pred``.

    Returns
    -------
    float
        ``mean(pred == labels)`` over all positions, in ``[0, 1]``.

    Raises
    ------
    ConfigError
        If the shapes differ, are not 2-D, or are empty.

    Examples
    --------
    >>> import numpy as np
    >>> step_accuracy(np.array([[1, 2], [3, 4]]), np.array([[1, 0], [3, 4]]))
    0.75
    """
    pred_arr, labels_arr = _check_pair(pred, labels, "step_accuracy")
    return float(np.mean(pred_arr == labels_arr))


def sequence_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of sequences predicted right at every time step.

    Blank positions count like any other: a sequence is right only if every
    one of its ``length`` positions matches.

    Parameters
    ----------
    pred : numpy.ndarray
        Predicted classes, integer array of shape ``[length, batch]``
        (time-major).
    labels : numpy.ndarray
        Target classes, same shape as ``pred``.

    Returns
    -------
    float
        Fraction of the ``batch`` columns with ``pred[:, b] == labels[:, b]``
        everywhere, in ``[0, 1]``.

    Raises
    ------
    ConfigError
        If the shapes differ, are not 2-D, or are empty.

    Examples
    --------
    >>> import numpy as np
    >>> sequence_accuracy(np.array([[1, 2], [3, 4]]), np.array([[1, 0], [3, 4]]))
    0.5
    """
    pred_arr, labels_arr = _check_pair(pred, labels, "sequence_accuracy")
    return float(np.mean(np.all(pred_arr == labels_arr, axis=0)))


class Task(abc.ABC):
    """Abstract base of a synthetic sequence task.

    Subclasses set :attr:`name`, implement :meth:`_draw` (the vectorised
    batch generator), :meth:`options`, and the properties :attr:`length`,
    :attr:`n_in` and :attr:`baseline_loss`.

    Attributes
    ----------
    name : str
        Registry name of the task (the key in :data:`tpgraph.tasks.TASKS`).
    blank : int
        Token index of the blank symbol.
    marker : int or None
        Token index of the start-recall marker, or ``None`` if the task has
        no marker.

    Notes
    -----
    All arrays are ``int64`` and time-major: ``[length, batch_size]``.
    ``n_out == n_in``: the output softmax runs over the whole vocabulary, and
    the labels simply never use tokens that cannot be targets (such as the
    marker).
    """

    name: str = "task"
    marker: int | None = None

    # ------------------------------------------------------------------ API
    @property
    @abc.abstractmethod
    def length(self) -> int:
        """int: Number of time steps of every sequence."""

    @property
    @abc.abstractmethod
    def n_in(self) -> int:
        """int: Vocabulary size of the inputs (number of token indices)."""

    @property
    def n_out(self) -> int:
        """int: Number of output classes; equal to :attr:`n_in`."""
        return self.n_in

    @property
    @abc.abstractmethod
    def blank(self) -> int:
        """int: Token index of the blank symbol."""

    @property
    @abc.abstractmethod
    def baseline_loss(self) -> float | None:
        """float or None: Per-step cross-entropy of the best memoryless predictor."""

    @abc.abstractmethod
    def options(self) -> dict:
        """Constructor arguments of this task.

        Returns
        -------
        dict
            JSON-able mapping such that ``make_task(task.name, **task.options())``
            rebuilds an equal task.
        """

    @abc.abstractmethod
    def _draw(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Implemented by each subclass."""

    def batch(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw a batch of input and label sequences.

        Parameters
        ----------
        rng : numpy.random.Generator
            Source of every random number used, so that equal generator
            states give equal batches.
        batch_size : int
            Number of sequences, ``>= 1``.

        Returns
        -------
        inputs : numpy.ndarray
            ``int64`` array of shape ``[length, batch_size]`` (time-major).
        labels : numpy.ndarray
            ``int64`` array of shape ``[length, batch_size]`` (time-major).

        Raises
        ------
        ConfigError
            If ``rng`` is not a generator or ``batch_size`` is not an integer
            ``>= 1``.
        """
        _check_rng(rng, f"{self.name}.batch")
        batch_size = check_int_option("batch_size", batch_size, 1, f"{self.name}.batch")
        inputs, labels = self._draw(rng, batch_size)
        return inputs.astype(np.int64, copy=False), labels.astype(np.int64, copy=False)

    def validation_set(
        self, seed: int, n_batches: int, batch_size: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Build a fixed validation set from its own generator.

        Parameters
        ----------
        seed : int
            Seed of ``numpy.random.default_rng``, ``>= 0``. Identical
            arguments always give identical arrays.
        n_batches : int
            Number of batches, ``>= 1``.
        batch_size : int
            Sequences per batch, ``>= 1``.

        Returns
        -------
        inputs : numpy.ndarray
            ``int64`` array of shape ``[n_batches, length, batch_size]``.
        labels : numpy.ndarray
            ``int64`` array of shape ``[n_batches, length, batch_size]``.

        Raises
        ------
        ConfigError
            If an argument is not an integer in its allowed range.
        """
        owner = f"{self.name}.validation_set"
        seed = check_int_option("seed", seed, 0, owner)
        n_batches = check_int_option("n_batches", n_batches, 1, owner)
        batch_size = check_int_option("batch_size", batch_size, 1, owner)
        rng = np.random.default_rng(seed)
        pairs = [self.batch(rng, batch_size) for _ in range(n_batches)]
        inputs = np.stack([p[0] for p in pairs])
        labels = np.stack([p[1] for p in pairs])
        return inputs, labels

    def example(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw one input/label pair.

        Parameters
        ----------
        rng : numpy.random.Generator
            Source of randomness.

        Returns
        -------
        inputs : numpy.ndarray
            1-D ``int64`` array of length :attr:`length`.
        labels : numpy.ndarray
            1-D ``int64`` array of length :attr:`length`.
        """
        inputs, labels = self.batch(rng, 1)
        return inputs[:, 0].copy(), labels[:, 0].copy()

    def render(self, inputs: np.ndarray, labels: np.ndarray) -> str:
        """Format one input/label pair as two readable lines.

        Symbols are written as their digits, the blank as ``-`` and the
        marker as ``*``. When the vocabulary has symbols above 9, tokens are
        separated by spaces so that multi-digit symbols stay readable.

        Parameters
        ----------
        inputs : numpy.ndarray
            1-D integer array of length :attr:`length`.
        labels : numpy.ndarray
            1-D integer array of length :attr:`length`.

        Returns
        -------
        str
            ``"in : ...\\nout: ..."``.

        Raises
        ------
        ConfigError
            If an array is not 1-D of length :attr:`length` or holds a token
            outside ``0 .. n_in - 1``.
        """
        lines = []
        for label, seq in (("inputs", inputs), ("labels", labels)):
            arr = np.asarray(seq)
            if arr.shape != (self.length,):
                raise ConfigError(
                    f"{self.name}.render: {label!r} must be a 1-D array of shape "
                    f"({self.length},), got shape {arr.shape}"
                )
            if arr.size and (arr.min() < 0 or arr.max() >= self.n_in):
                raise ConfigError(
                    f"{self.name}.render: {label!r} holds tokens outside the allowed "
                    f"range 0..{self.n_in - 1}: min {arr.min()}, max {arr.max()}"
                )
            lines.append(self._render_tokens(arr))
        return f"in : {lines[0]}\nout: {lines[1]}"

    def _render_tokens(self, arr: np.ndarray) -> str:
        marker = self.marker
        parts = []
        for tok in arr.tolist():
            if tok == self.blank:
                parts.append("-")
            elif marker is not None and tok == marker:
                parts.append("*")
            else:
                parts.append(str(tok))
        sep = " " if self.blank > 10 else ""
        return sep.join(parts)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Task):
            return NotImplemented
        return type(self) is type(other) and self.options() == other.options()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.options().items()))))
