"""Numba kernels for the optimisers in :mod:`tpgraph.optim`.

Every kernel updates a parameter in place and allocates nothing.  All array
arguments are 1-D contiguous views of the same length (the Python wrappers in
:mod:`tpgraph.optim` pass ``array.ravel()`` views of C-contiguous arrays); all
scalar arguments should have the parameter's dtype so that a float32 parameter
is updated in float32 arithmetic, exactly as NumPy would do it.

The gradient is the gradient of a loss to *minimise*: every rule moves the
parameter against it.
"""

import numba
import numpy as np


@numba.njit(cache=True, fastmath=False)
def sgd_kernel(param: np.ndarray, grad: np.ndarray, lr: float) -> None:
    """Plain gradient descent: ``param -= lr * grad``.

    Parameters
    ----------
    param : numpy.ndarray
        Flat parameter array, updated in place.
    grad : numpy.ndarray
        Flat gradient, same length and dtype as `param`.
    lr : float
        Learning rate.

    Raises
    ------
    ValueError
        If the arrays differ in length.
    """
    n = param.size
    if grad.size != n:
        raise ValueError("sgd_kernel: grad and param differ in length")
    for i in range(n):
        param[i] -= lr * grad[i]


@numba.njit(cache=True, fastmath=False)
def momentum_kernel(
    param: np.ndarray,
    grad: np.ndarray,
    velocity: np.ndarray,
    lr: float,
    mu: float,
    nesterov: bool,
) -> None:
    """Heavy-ball momentum, classical or Nesterov (PyTorch convention).

    ``velocity = mu * velocity + grad``; then classical momentum does
    ``param -= lr * velocity`` and Nesterov momentum does
    ``param -= lr * (grad + mu * velocity)`` with the updated velocity.

    Parameters
    ----------
    param : numpy.ndarray
        Flat parameter array, updated in place.
    grad : numpy.ndarray
        Flat gradient, same length and dtype as `param`.
    velocity : numpy.ndarray
        Flat velocity buffer, same length and dtype as `param`, updated in
        place.
    lr : float
        Learning rate.
    mu : float
        Momentum coefficient.
    nesterov : bool
        Use the Nesterov update instead of the classical one.

    Raises
    ------
    ValueError
        If the arrays differ in length.
    """
    n = param.size
    if grad.size != n or velocity.size != n:
        raise ValueError("momentum_kernel: arrays differ in length")
    if nesterov:
        for i in range(n):
            g = grad[i]
            v = mu * velocity[i] + g
            velocity[i] = v
            param[i] -= lr * (g + mu * v)
    else:
        for i in range(n):
            v = mu * velocity[i] + grad[i]
            velocity[i] = v
            param[i] -= lr * v


@numba.njit(cache=True, fastmath=False)
def adam_kernel(
    param: np.ndarray,
    grad: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    lr: float,
    beta1: float,
    beta2: float,
    one_minus_beta1: float,
    one_minus_beta2: float,
    eps: float,
    bias_correction1: float,
    bias_correction2: float,
) -> None:
    """One Adam step with bias correction.

    ``m = beta1 m + (1 - beta1) g``, ``v = beta2 v + (1 - beta2) g**2``,
    ``param -= lr * mhat / (sqrt(vhat) + eps)`` where
    ``mhat = m / bias_correction1`` and ``vhat = v / bias_correction2``.

    Parameters
    ----------
    param : numpy.ndarray
        Flat parameter array, updated in place.
    grad : numpy.ndarray
        Flat gradient, same length and dtype as `param`.
    m, v : numpy.ndarray
        Flat first- and second-moment buffers, same length and dtype as
        `param`, updated in place.
    lr : float
        Learning rate.
    beta1, beta2 : float
        Decay rates of the moment estimates.
    one_minus_beta1, one_minus_beta2 : float
        ``1 - beta1`` and ``1 - beta2``, computed by the caller in the
        parameter's dtype (a literal ``1`` inside a Numba kernel would promote
        float32 arithmetic to float64).
    eps : float
        Term added to the denominator for numerical stability.
    bias_correction1, bias_correction2 : float
        ``1 - beta1**t`` and ``1 - beta2**t`` for the current step ``t``
        (counted from 1), computed by the caller.

    Raises
    ------
    ValueError
        If the arrays differ in length.
    """
    n = param.size
    if grad.size != n or m.size != n or v.size != n:
        raise ValueError("adam_kernel: arrays differ in length")
    for i in range(n):
        g = grad[i]
        mi = beta1 * m[i] + one_minus_beta1 * g
        vi = beta2 * v[i] + one_minus_beta2 * (g * g)
        m[i] = mi
        v[i] = vi
        mhat = mi / bias_correction1
        vhat = vi / bias_correction2
        param[i] -= lr * mhat / (np.sqrt(vhat) + eps)
