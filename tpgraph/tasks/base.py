"""Common machinery of the sequence tasks.

Every task produces sequences in *time-major* layout. Token tasks (copy
memory, sequence expansion, temporal order; ``input_kind == "index"``) give
an integer array of shape ``[length, batch_size]`` whose entry ``[t, b]`` is
the token fed at time step ``t`` of sequence ``b``; the model turns the
indices into one-hot vectors itself (by a gather), so the tasks never build
one-hot arrays. Real-valued tasks (the adding problem; ``input_kind ==
"real"``) give ``float64`` arrays ``[length, batch_size, n_in]``.

Labels are time-major too, with :attr:`Task.label_length` steps: ``length``
for many-to-many tasks, 1 for many-to-one tasks (only the last step has a
label). Classification labels are integers ``[label_length, batch_size]``;
regression targets (``output_kind == "regression"``) are ``float64``
``[label_length, batch_size, n_out]``.

This module holds the abstract :class:`Task`, the option validators shared by
the concrete tasks, and the accuracy measures :func:`step_accuracy`,
:func:`sequence_accuracy` and :func:`within_tolerance`.
"""

from __future__ import annotations

import abc
import json
import math
import numbers

import numpy as np

from tpgraph.errors import ConfigError

__all__ = [
    "Task",
    "check_int_option",
    "check_float_option",
    "check_positions",
    "sequence_accuracy",
    "step_accuracy",
    "within_tolerance",
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


def check_float_option(name: str, value: object, *, above: float | None = None, maximum: float | None = None,
                       owner: str = "task") -> float:
    """Validate a real-valued option and return it as a Python ``float``.

    Parameters
    ----------
    name : str
        Name of the option, used in the error message.
    value : object
        The value given by the caller (an int or a float; ``bool`` is rejected).
    above : float, optional
        The value must be strictly greater than this.
    maximum : float, optional
        The value must be at most this.
    owner : str, optional
        What the option belongs to, used in the error message.

    Raises
    ------
    ConfigError
        If ``value`` is not a finite number in the allowed range; the message
        names the option, the value given and the allowed values.
    """
    bounds = []
    if above is not None:
        bounds.append(f"> {above:g}")
    if maximum is not None:
        bounds.append(f"<= {maximum:g}")
    allowed = "a finite number" + (" " + " and ".join(bounds) if bounds else "")
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if ok:
        value = float(value)  # type: ignore[arg-type]
        ok = math.isfinite(value) and (above is None or value > above) and (maximum is None or value <= maximum)
    if not ok:
        raise ConfigError(f"{owner}: option {name!r} must be {allowed}, got {value!r}")
    return value  # type: ignore[return-value]


def check_positions(name: str, value: object, length: int, count: int, owner: str = "task") -> tuple:
    """Validate ranges of marker positions given as fractions of the sequence length.

    Parameters
    ----------
    name : str
        Name of the option (``"positions"``), used in the error message.
    value : sequence of pairs
        ``count`` pairs ``[start, end]`` with ``0 <= start < end <= 1``. Pair
        ``i`` allows the 0-based time steps ``floor(start * length) <= p <
        floor(end * length)``; the ranges must be in increasing order and not
        overlap, and each must hold at least one time step.
    length : int
        The sequence length ``T``.
    count : int
        How many ranges the task needs.
    owner : str, optional
        What the option belongs to, used in the error message.

    Returns
    -------
    tuple
        ``((start, end), ...)`` as floats.

    Raises
    ------
    ConfigError
        If the value is not ``count`` such pairs, or a range holds no time
        step at this ``length`` (the message gives the steps it covers).
    """
    example = "[[0.1, 0.2], [0.4, 0.5]]"
    shape_msg = (f"{owner}: option {name!r} must be a list of {count} [start, end] pairs of fractions of the "
                 f"length with 0 <= start < end <= 1 (e.g. {example}), got {value!r}")
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != count:
        raise ConfigError(shape_msg)
    out = []
    for pair in value:
        if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
            raise ConfigError(shape_msg)
        a, b = pair
        if not all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and math.isfinite(v)
                   for v in (a, b)) or not 0.0 <= a < b <= 1.0:
            raise ConfigError(shape_msg)
        out.append((float(a), float(b)))
    previous_end = 0
    for i, (a, b) in enumerate(out):
        lo, hi = _step(a, length), _step(b, length)
        if hi <= lo:
            raise ConfigError(f"{owner}: option {name!r}: range {i} [{a:g}, {b:g}) holds no time step at length "
                              f"{length} (steps {lo}..{hi - 1}); use a longer 'length' or a wider range")
        if lo < previous_end:
            raise ConfigError(f"{owner}: option {name!r}: range {i} [{a:g}, {b:g}) (steps {lo}..{hi - 1}) "
                              f"overlaps or precedes range {i - 1} at length {length}; the ranges must be in "
                              f"increasing order and disjoint")
        previous_end = hi
    return tuple(out)


def position_steps(positions: tuple, length: int) -> list[tuple[int, int]]:
    """The half-open 0-based step ranges ``[floor(start T), floor(end T))`` of validated ``positions``."""
    return [(_step(a, length), _step(b, length)) for a, b in positions]


def _step(fraction: float, length: int) -> int:
    """``floor(fraction * length)``, robust to round-off (``0.57 * 100`` is step 57, not 56)."""
    return math.floor(fraction * length + 1e-9)


def within_tolerance(pred: np.ndarray, targets: np.ndarray, tolerance: float) -> np.ndarray:
    """Which predictions are within ``tolerance`` of their targets, in every component.

    Parameters
    ----------
    pred, targets : numpy.ndarray
        Real arrays of equal shape ``[length, batch, n]`` (time-major).
    tolerance : float
        The largest absolute error that counts as right (exclusive).

    Returns
    -------
    numpy.ndarray
        ``bool`` array ``[length, batch]``: ``all(|pred - targets| < tolerance)``
        over the last axis. With :func:`step_accuracy` /
        :func:`sequence_accuracy` of ``hits`` against ``True`` this gives the
        fraction of steps / of sequences right.

    Examples
    --------
    >>> import numpy as np
    >>> within_tolerance(np.array([[[0.50], [0.30]]]), np.array([[[0.52], [0.40]]]), 0.04)
    array([[ True, False]])
    """
    p, t = np.asarray(pred), np.asarray(targets)
    if p.shape != t.shape or p.ndim != 3:
        raise ConfigError(f"within_tolerance: 'pred' and 'targets' must be 3-D arrays [length, batch, n] of "
                          f"equal shape, got {p.shape} and {t.shape}")
    return np.all(np.abs(p - t) < tolerance, axis=2)


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
    blank : int or None
        Token index of the blank symbol (``None``: the task has none).
    marker : int or None
        Token index of the start-recall marker, or ``None`` if the task has
        no marker.
    input_kind : {"index", "real"}
        Integer tokens ``[length, batch]`` or real vectors ``[length, batch, n_in]``.
    output_kind : {"class", "regression"}
        Integer class labels (a softmax output, cross-entropy) or real targets
        ``[label_length, batch, n_out]`` (a linear output, squared error).
    many_to_one : bool
        Only the last step has a label (:attr:`label_length` is 1).

    Notes
    -----
    All arrays are time-major. For the token tasks ``n_out == n_in`` unless a
    subclass says otherwise: the output softmax runs over the whole
    vocabulary, and the labels simply never use tokens that cannot be targets
    (such as the marker).
    """

    name: str = "task"
    #: The option that sets how far back credit must reach (``length`` here, ``delay`` for copy memory); a
    #: curriculum (:mod:`tpgraph.train.curriculum`) trains on smaller values of it first.
    horizon: str = "length"
    marker: int | None = None
    input_kind: str = "index"
    output_kind: str = "class"
    many_to_one: bool = False

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
    def label_length(self) -> int:
        """int: Time steps that carry a label: :attr:`length`, or 1 for a many-to-one task."""
        return 1 if self.many_to_one else self.length

    @property
    def blank(self) -> int | None:
        """int or None: Token index of the blank symbol (None: the task has none)."""
        return None

    @property
    def success_accuracy(self) -> float | None:
        """float or None: The validation accuracy at which a run counts as having solved the task."""
        return None

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

    @property
    def horizon_value(self) -> int:
        """int: The value of the :attr:`horizon` option."""
        return self.options()[self.horizon]

    def with_horizon(self, value: int) -> "Task":
        """This task with its :attr:`horizon` option set to ``value``, every other option kept.

        Raises
        ------
        ConfigError
            If ``value`` is not a valid value of that option.
        """
        return type(self)(**{**self.options(), self.horizon: value})

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
            ``int64`` array of shape ``[length, batch_size]`` (time-major);
            ``float64`` ``[length, batch_size, n_in]`` for real inputs.
        labels : numpy.ndarray
            ``int64`` array of shape ``[label_length, batch_size]``;
            ``float64`` ``[label_length, batch_size, n_out]`` for regression.

        Raises
        ------
        ConfigError
            If ``rng`` is not a generator or ``batch_size`` is not an integer
            ``>= 1``.
        """
        _check_rng(rng, f"{self.name}.batch")
        batch_size = check_int_option("batch_size", batch_size, 1, f"{self.name}.batch")
        inputs, labels = self._draw(rng, batch_size)
        in_type = np.int64 if self.input_kind == "index" else np.float64
        out_type = np.int64 if self.output_kind == "class" else np.float64
        return inputs.astype(in_type, copy=False), labels.astype(out_type, copy=False)

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
            The batches of :meth:`batch` stacked: ``[n_batches, length,
            batch_size]`` (real inputs: ``[..., n_in]`` more).
        labels : numpy.ndarray
            ``[n_batches, label_length, batch_size]`` (regression: ``[..., n_out]``).

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
            Sequence ``0`` of a batch of one: ``[length]`` (real inputs: ``[length, n_in]``).
        labels : numpy.ndarray
            Its labels: ``[label_length]`` (regression: ``[label_length, n_out]``).
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
        return hash((type(self).__name__, json.dumps(self.options(), sort_keys=True)))
