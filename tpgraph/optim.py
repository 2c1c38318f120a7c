"""Hand-written optimisers for parameter arrays.

Each optimiser instance serves exactly one parameter array.  ``step(param,
grad)`` updates the parameter in place using a Numba kernel from
:mod:`tpgraph.kernels.optim_kernels`; the gradient is the gradient of a loss to
*minimise*.  State buffers (velocity, moments) are allocated on the first step
with the parameter's shape and dtype, and every later step must use the same
shape and dtype.

Arithmetic happens in the parameter's dtype: a float32 parameter is updated
with float32 scalars and float32 buffers.

The optimiser's state (step count and buffers) is saved by
:meth:`Optimizer.state_dict` and restored by :meth:`Optimizer.load_state_dict`;
its settings are given by :meth:`Optimizer.hyperparameters`, and
``make_optimizer(**opt.hyperparameters())`` rebuilds an equivalent optimiser.

Examples
--------
>>> import numpy as np
>>> opt = make_optimizer("adam", 1e-3)
>>> w = np.zeros((3, 2))
>>> opt.step(w, np.ones((3, 2)))
>>> opt.t
1
"""

from __future__ import annotations

import abc

import math
from numbers import Real
from typing import Any, ClassVar

import numpy as np

from tpgraph.errors import CheckpointError, ConfigError
from tpgraph.kernels.optim_kernels import adam_kernel, momentum_kernel, sgd_kernel

__all__ = ["OPTIMIZERS", "Optimizer", "SGD", "Momentum", "Adam", "make_optimizer"]

#: Names accepted by :func:`make_optimizer`.
OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "nesterov", "adam")

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _is_real(value: Any) -> bool:
    """Whether `value` is a real number (bools excluded)."""
    return isinstance(value, Real) and not isinstance(value, (bool, np.bool_))


def _check_positive(owner: str, option: str, value: Any) -> float:
    """Validate a finite, strictly positive number and return it as a float."""
    if not _is_real(value) or not math.isfinite(float(value)) or float(value) <= 0:
        raise ConfigError(
            f"{owner}: option {option!r} = {value!r} is invalid; "
            "allowed: a finite number > 0"
        )
    return float(value)


def _check_unit_interval(owner: str, option: str, value: Any) -> float:
    """Validate a number in ``[0, 1)`` and return it as a float."""
    if not _is_real(value) or not (0.0 <= float(value) < 1.0):
        raise ConfigError(
            f"{owner}: option {option!r} = {value!r} is invalid; "
            "allowed: a number in [0, 1)"
        )
    return float(value)


def _check_bool(owner: str, option: str, value: Any) -> bool:
    """Validate a boolean flag."""
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(
            f"{owner}: option {option!r} = {value!r} is invalid; allowed: true or false"
        )
    return bool(value)


class Optimizer(abc.ABC):
    """Base class of the optimisers: one instance per parameter array.

    Subclasses set :attr:`name` and :attr:`_state_keys` and implement
    :meth:`_update` and :meth:`hyperparameters`.

    Parameters
    ----------
    lr : float
        Learning rate, finite and > 0.  It may be changed later through the
        :attr:`lr` property (e.g. by a schedule).

    Attributes
    ----------
    name : str
        Name of the rule, one of :data:`OPTIMIZERS`.
    t : int
        Number of steps taken so far.
    """

    name: ClassVar[str] = ""
    _state_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, lr: float) -> None:
        self._lr = _check_positive(type(self).__name__, "lr", lr)
        self._t = 0
        self._shape: tuple[int, ...] | None = None
        self._dtype: np.dtype | None = None
        self._state: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ props
    @property
    def lr(self) -> float:
        """Learning rate (settable; validated like the constructor argument)."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = _check_positive(type(self).__name__, "lr", value)

    @property
    def t(self) -> int:
        """Number of steps taken so far."""
        return self._t

    @property
    def shape(self) -> tuple[int, ...] | None:
        """Shape of the parameter this optimiser serves, or None before the first step."""
        return self._shape

    @property
    def dtype(self) -> np.dtype | None:
        """Dtype of the parameter this optimiser serves, or None before the first step."""
        return self._dtype

    # ------------------------------------------------------------------- step
    def step(self, param: np.ndarray, grad: np.ndarray) -> None:
        """Take one descent step, updating `param` in place.

        Parameters
        ----------
        param : numpy.ndarray
            C-contiguous, writeable float32 or float64 array of any shape.
        grad : numpy.ndarray
            Gradient of the loss with respect to `param`: same shape and dtype.

        Raises
        ------
        ConfigError
            If `param` is not a writeable C-contiguous float32/float64 array,
            if `grad` does not match it, or if `param` differs in shape or
            dtype from the parameter this optimiser was first used with (or
            whose state was loaded).
        """
        owner = type(self).__name__
        if not isinstance(param, np.ndarray):
            raise ConfigError(f"{owner}.step: param must be a numpy array, got {type(param).__name__}")
        if param.dtype not in _FLOAT_DTYPES:
            raise ConfigError(
                f"{owner}.step: param dtype {param.dtype} is not supported; "
                "allowed: float32 or float64"
            )
        if not param.flags.c_contiguous or not param.flags.writeable:
            raise ConfigError(
                f"{owner}.step: param must be a writeable C-contiguous array "
                "(the update is done in place)"
            )
        if not isinstance(grad, np.ndarray):
            raise ConfigError(f"{owner}.step: grad must be a numpy array, got {type(grad).__name__}")
        if grad.shape != param.shape:
            raise ConfigError(
                f"{owner}.step: grad shape {grad.shape} does not match param shape {param.shape}"
            )
        if grad.dtype != param.dtype:
            raise ConfigError(
                f"{owner}.step: grad dtype {grad.dtype} does not match param dtype {param.dtype}"
            )
        if self._shape is not None and param.shape != self._shape:
            raise ConfigError(
                f"{owner}.step: param shape {param.shape} differs from the shape "
                f"{self._shape} this optimiser serves; use one optimiser per parameter"
            )
        if self._dtype is not None and param.dtype != self._dtype:
            raise ConfigError(
                f"{owner}.step: param dtype {param.dtype} differs from the dtype "
                f"{self._dtype} this optimiser serves; use one optimiser per parameter"
            )
        self._shape = param.shape
        self._dtype = param.dtype
        if len(self._state) != len(self._state_keys):
            self._state = {k: np.zeros(param.shape, dtype=param.dtype) for k in self._state_keys}
        self._t += 1
        self._update(param.ravel(), np.ascontiguousarray(grad).ravel(), param.dtype.type)

    def step_trusted(self, param: np.ndarray, grad: np.ndarray) -> None:
        """:meth:`step` without the argument checks, for a caller that made them once.

        The engine calls this every batch with the same C-contiguous arrays of
        one dtype and shape; the first call (which allocates the state) and any
        call with another shape or dtype go through :meth:`step`.
        """
        if self._shape != param.shape or self._dtype != param.dtype or len(self._state) != len(self._state_keys):
            self.step(param, grad)
            return
        self._t += 1
        self._update(param.reshape(-1), grad.reshape(-1), param.dtype.type)

    @abc.abstractmethod
    def _update(self, p: np.ndarray, g: np.ndarray, scalar: type) -> None:
        """Apply the rule to flat views; `scalar` converts Python floats to the dtype."""

    def reset(self) -> None:
        """Forget the state (step count, buffers, bound shape and dtype)."""
        self._t = 0
        self._shape = None
        self._dtype = None
        self._state = {}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray | int | float]:
        """Return the optimiser's state, enough to resume bit-for-bit.

        Returns
        -------
        dict
            ``"t"`` (int, the step count) and, once allocated, one array copy
            per state buffer (e.g. ``"velocity"`` or ``"m"`` and ``"v"``).
            Hyperparameters are not included; see :meth:`hyperparameters`.
        """
        out: dict[str, np.ndarray | int | float] = {"t": int(self._t)}
        for key, arr in self._state.items():
            out[key] = arr.copy()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict`.

        The buffers are copied.  If this optimiser already serves a parameter
        (it has stepped or loaded state before), the buffers must match that
        parameter's shape and dtype; otherwise they set it.

        Parameters
        ----------
        state : dict
            Mapping with key ``"t"`` and, when ``t > 0`` (optional when
            ``t == 0``), every state buffer of this rule.

        Raises
        ------
        CheckpointError
            Naming the key, if a key is unknown or missing, ``t`` is not a
            non-negative integer, or a buffer is not a float32/float64 array
            of the right shape and dtype.
        """
        owner = type(self).__name__
        if not isinstance(state, dict):
            raise CheckpointError(f"{owner}.load_state_dict: expected a dict, got {type(state).__name__}")
        allowed = ("t",) + self._state_keys
        for key in state:
            if key not in allowed:
                raise CheckpointError(
                    f"{owner}.load_state_dict: unknown key {key!r}; allowed keys: {list(allowed)}"
                )
        if "t" not in state:
            raise CheckpointError(f"{owner}.load_state_dict: missing key 't'")
        t = state["t"]
        if not isinstance(t, (int, np.integer)) or isinstance(t, (bool, np.bool_)) or t < 0:
            raise CheckpointError(
                f"{owner}.load_state_dict: key 't' = {t!r} is invalid; allowed: an integer >= 0"
            )
        present = [k for k in self._state_keys if k in state]
        if present or t > 0:
            for key in self._state_keys:
                if key not in state:
                    raise CheckpointError(
                        f"{owner}.load_state_dict: missing key {key!r} "
                        f"(required when 't' > 0 or any buffer is given)"
                    )
        shape, dtype = self._shape, self._dtype
        source = "the parameter this optimiser serves"
        new_state: dict[str, np.ndarray] = {}
        for key in self._state_keys if present else ():
            arr = state[key]
            if not isinstance(arr, np.ndarray):
                raise CheckpointError(
                    f"{owner}.load_state_dict: key {key!r} must be a numpy array, got {type(arr).__name__}"
                )
            if arr.dtype not in _FLOAT_DTYPES:
                raise CheckpointError(
                    f"{owner}.load_state_dict: key {key!r} has dtype {arr.dtype}; "
                    "allowed: float32 or float64"
                )
            if shape is not None and arr.shape != shape:
                raise CheckpointError(
                    f"{owner}.load_state_dict: key {key!r} has shape {arr.shape}, "
                    f"expected {shape} (from {source})"
                )
            if dtype is not None and arr.dtype != dtype:
                raise CheckpointError(
                    f"{owner}.load_state_dict: key {key!r} has dtype {arr.dtype}, "
                    f"expected {dtype} (from {source})"
                )
            if shape is None:
                source = f"key {key!r}"
            shape, dtype = arr.shape, arr.dtype
            new_state[key] = np.array(arr, dtype=arr.dtype, order="C", copy=True)
        self._t = int(t)
        self._shape, self._dtype = shape, dtype
        self._state = new_state

    # ------------------------------------------------------------- describing
    @abc.abstractmethod
    def hyperparameters(self) -> dict[str, Any]:
        """Return the settings as a JSON-able dict.

        Returns
        -------
        dict
            ``"name"`` plus every constructor option;
            ``make_optimizer(**opt.hyperparameters())`` rebuilds an equivalent
            optimiser (without its state).
        """

    def __repr__(self) -> str:
        settings = {k: v for k, v in self.hyperparameters().items() if k != "name"}
        args = ", ".join(f"{k}={v!r}" for k, v in settings.items())
        bound = "" if self._shape is None else f", shape={self._shape}, dtype={self._dtype}"
        return f"{type(self).__name__}({args}, t={self._t}{bound})"


class SGD(Optimizer):
    """Plain gradient descent: ``p -= lr * g``.

    Parameters
    ----------
    lr : float
        Learning rate, finite and > 0.
    """

    name = "sgd"
    _state_keys = ()

    def _update(self, p: np.ndarray, g: np.ndarray, scalar: type) -> None:
        sgd_kernel(p, g, scalar(self._lr))

    def hyperparameters(self) -> dict[str, Any]:
        """Return ``{"name": "sgd", "lr": lr}``."""
        return {"name": self.name, "lr": self._lr}


class Momentum(Optimizer):
    """Gradient descent with heavy-ball momentum, classical or Nesterov.

    Each step does ``v = momentum * v + g``; classical momentum then does
    ``p -= lr * v`` and Nesterov momentum does ``p -= lr * (g + momentum * v)``
    with the updated ``v``.  This is the PyTorch convention (``torch.optim.SGD``
    with ``dampening=0``), in which the velocity accumulates raw gradients and
    the learning rate is applied outside it.

    Parameters
    ----------
    lr : float
        Learning rate, finite and > 0.
    momentum : float, default 0.9
        Momentum coefficient, in ``[0, 1)``.
    nesterov : bool, default False
        Use the Nesterov update.
    """

    _state_keys = ("velocity",)

    def __init__(self, lr: float, momentum: float = 0.9, nesterov: bool = False) -> None:
        super().__init__(lr)
        self._momentum = _check_unit_interval("Momentum", "momentum", momentum)
        self._nesterov = _check_bool("Momentum", "nesterov", nesterov)

    @property
    def name(self) -> str:  # type: ignore[override]
        """``"nesterov"`` or ``"momentum"``."""
        return "nesterov" if self._nesterov else "momentum"

    @property
    def momentum(self) -> float:
        """Momentum coefficient."""
        return self._momentum

    @property
    def nesterov(self) -> bool:
        """Whether the Nesterov update is used."""
        return self._nesterov

    def _update(self, p: np.ndarray, g: np.ndarray, scalar: type) -> None:
        momentum_kernel(
            p, g, self._state["velocity"].ravel(), scalar(self._lr), scalar(self._momentum), self._nesterov
        )

    def hyperparameters(self) -> dict[str, Any]:
        """Return ``{"name": "momentum" | "nesterov", "lr": ..., "momentum": ...}``."""
        return {"name": self.name, "lr": self._lr, "momentum": self._momentum}


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba, 2015).

    Each step does ``t += 1``, ``m = beta1 m + (1 - beta1) g``,
    ``v = beta2 v + (1 - beta2) g**2`` and
    ``p -= lr * mhat / (sqrt(vhat) + eps)`` with ``mhat = m / (1 - beta1**t)``
    and ``vhat = v / (1 - beta2**t)``.

    Parameters
    ----------
    lr : float
        Learning rate, finite and > 0.
    beta1 : float, default 0.9
        Decay of the first-moment estimate, in ``[0, 1)``.
    beta2 : float, default 0.999
        Decay of the second-moment estimate, in ``[0, 1)``.
    eps : float, default 1e-8
        Added to the denominator, finite and > 0.
    """

    name = "adam"
    _state_keys = ("m", "v")

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        super().__init__(lr)
        self._beta1 = _check_unit_interval("Adam", "beta1", beta1)
        self._beta2 = _check_unit_interval("Adam", "beta2", beta2)
        self._eps = _check_positive("Adam", "eps", eps)

    @property
    def beta1(self) -> float:
        """Decay of the first-moment estimate."""
        return self._beta1

    @property
    def beta2(self) -> float:
        """Decay of the second-moment estimate."""
        return self._beta2

    @property
    def eps(self) -> float:
        """Denominator offset."""
        return self._eps

    def _update(self, p: np.ndarray, g: np.ndarray, scalar: type) -> None:
        b1 = scalar(self._beta1)
        b2 = scalar(self._beta2)
        one = scalar(1)
        bias_correction1 = scalar(1.0 - self._beta1**self._t)
        bias_correction2 = scalar(1.0 - self._beta2**self._t)
        adam_kernel(
            p,
            g,
            self._state["m"].ravel(),
            self._state["v"].ravel(),
            scalar(self._lr),
            b1,
            b2,
            one - b1,
            one - b2,
            scalar(self._eps),
            bias_correction1,
            bias_correction2,
        )

    def hyperparameters(self) -> dict[str, Any]:
        """Return ``{"name": "adam", "lr", "beta1", "beta2", "eps"}``."""
        return {
            "name": self.name,
            "lr": self._lr,
            "beta1": self._beta1,
            "beta2": self._beta2,
            "eps": self._eps,
        }


_OPTIONS: dict[str, tuple[str, ...]] = {
    "sgd": (),
    "momentum": ("momentum", "nesterov"),
    "nesterov": ("momentum",),
    "adam": ("beta1", "beta2", "eps"),
}


def make_optimizer(name: str, lr: float, **options: Any) -> Optimizer:
    """Build an optimiser by name.

    Parameters
    ----------
    name : str
        One of :data:`OPTIMIZERS`: ``"sgd"``, ``"momentum"``, ``"nesterov"``
        (momentum with ``nesterov=True``) or ``"adam"``.
    lr : float
        Learning rate, finite and > 0.
    **options
        Rule-specific settings: ``momentum`` (in ``[0, 1)``) for
        ``"momentum"`` and ``"nesterov"``, plus ``nesterov`` (bool) for
        ``"momentum"``; ``beta1``, ``beta2`` (in ``[0, 1)``) and ``eps``
        (> 0) for ``"adam"``.

    Returns
    -------
    Optimizer
        A fresh optimiser with no state.

    Raises
    ------
    ConfigError
        If the name or an option is unknown, or a value is out of range; the
        message names the option, the value and what is allowed.
    """
    if not isinstance(name, str) or name not in _OPTIONS:
        raise ConfigError(f"optimizer name {name!r} is unknown; allowed: {list(OPTIMIZERS)}")
    allowed = _OPTIONS[name]
    for key in options:
        if key not in allowed:
            raise ConfigError(
                f"optimizer {name!r}: option {key!r} = {options[key]!r} is unknown; "
                f"allowed options: {['lr', *allowed]}"
            )
    _check_positive(f"optimizer {name!r}", "lr", lr)
    if name == "sgd":
        return SGD(lr)
    if name == "momentum":
        return Momentum(lr, **options)
    if name == "nesterov":
        return Momentum(lr, nesterov=True, **options)
    return Adam(lr, **options)
