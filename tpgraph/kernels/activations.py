"""Activation kernels, identified by integer codes.

Derivatives are expressed through the activation's *output* ``h`` (for tanh
``1 - h**2``, for the sigmoid ``h (1 - h)``), so the engine never stores
pre-activations. ``TANH_FAST`` is a rational approximation of tanh accurate to
float32 rounding (max abs error below 5e-7 in float32, 2e-8 in float64) that
vectorises; the engine uses it for float32 graphs only, and exact ``np.tanh``
for float64 (where finite-difference checks need the exact function).
"""

import numpy as np

from .jit import kernel

IDENTITY = 0
TANH = 1
SIGMOID = 2
RELU = 3
LEAKY_RELU = 4
TANH_FAST = 5

#: User-facing activation names and their codes.
ACTIVATIONS = {
    "identity": IDENTITY,
    "tanh": TANH,
    "sigmoid": SIGMOID,
    "relu": RELU,
    "leaky_relu": LEAKY_RELU,
}

# Coefficients of tanh(x) ~ x P(x^2) / Q(x^2) on |x| <= 9, fitted by this
# project (iteratively reweighted least squares on 20001 points, see
# tests/test_kernels.py for the accuracy check).
# The constants are float32 so that the float32 kernels stay in float32 lanes
# (TANH_FAST is only chosen for float32 graphs).
_P0 = np.float32(0.9999999063234193)
_P1 = np.float32(0.13373211264515147)
_P2 = np.float32(0.00348659817720714)
_P3 = np.float32(2.0472104979998764e-05)
_P4 = np.float32(1.3184614233718861e-08)
_Q1 = np.float32(0.4670650812152742)
_Q2 = np.float32(0.02584204070714038)
_Q3 = np.float32(0.00032714123044776556)
_Q4 = np.float32(7.702821283490924e-07)
_CLAMP = np.float32(9.0)
_ONE = np.float32(1.0)


@kernel
def fast_tanh(x):
    """Rational approximation of tanh for one scalar."""
    x = min(max(x, -_CLAMP), _CLAMP)
    s = x * x
    p = _P0 + s * (_P1 + s * (_P2 + s * (_P3 + s * _P4)))
    q = _ONE + s * (_Q1 + s * (_Q2 + s * (_Q3 + s * _Q4)))
    y = x * p / q
    return min(max(y, -_ONE), _ONE)


@kernel
def act_scalar(z, code, slope):
    """Apply activation ``code`` to one scalar."""
    if code == TANH:
        return np.tanh(z)
    if code == TANH_FAST:
        return fast_tanh(z)
    if code == SIGMOID:
        return 1.0 / (1.0 + np.exp(-z))
    if code == RELU:
        return z if z > 0 else 0.0 * z
    if code == LEAKY_RELU:
        return z if z > 0 else slope * z
    return z


@kernel
def deriv_scalar(h, code, slope):
    """Derivative of activation ``code`` expressed through its output ``h``."""
    if code == TANH or code == TANH_FAST:
        return 1.0 - h * h
    if code == SIGMOID:
        return h * (1.0 - h)
    if code == RELU:
        return 1.0 if h > 0 else 0.0
    if code == LEAKY_RELU:
        return 1.0 if h > 0 else slope
    return 1.0


# The block kernels below branch on the activation code *outside* their loops,
# so that each loop body is straight-line code LLVM can vectorise (a branch
# inside the loop made the recurrent scan twice as slow).


@kernel
def act_block(z, a, bias, code, slope, out):
    """``out[r, j] = act(z[r, j] + a[r, j] + bias[j])`` over 2-D blocks (``out`` may alias ``z``)."""
    rows, cols = z.shape
    if code == TANH_FAST:
        for r in range(rows):
            for j in range(cols):
                out[r, j] = fast_tanh(z[r, j] + a[r, j] + bias[j])
    elif code == TANH:
        for r in range(rows):
            for j in range(cols):
                out[r, j] = np.tanh(z[r, j] + a[r, j] + bias[j])
    elif code == SIGMOID:
        for r in range(rows):
            for j in range(cols):
                out[r, j] = 1.0 / (1.0 + np.exp(-(z[r, j] + a[r, j] + bias[j])))
    elif code == RELU:
        for r in range(rows):
            for j in range(cols):
                v = z[r, j] + a[r, j] + bias[j]
                out[r, j] = v if v > 0 else 0.0 * v
    elif code == LEAKY_RELU:
        for r in range(rows):
            for j in range(cols):
                v = z[r, j] + a[r, j] + bias[j]
                out[r, j] = v if v > 0 else slope * v
    else:
        for r in range(rows):
            for j in range(cols):
                out[r, j] = z[r, j] + a[r, j] + bias[j]


@kernel
def bias_activate(z, bias, code, slope, out):
    """``out[r, j] = act(z[r, j] + bias[j])`` over a 2-D block (``out`` may be ``z``)."""
    rows, cols = z.shape
    if code == TANH_FAST:
        for r in range(rows):
            for j in range(cols):
                out[r, j] = fast_tanh(z[r, j] + bias[j])
    elif code == TANH:
        for r in range(rows):
            for j in range(cols):
                out[r, j] = np.tanh(z[r, j] + bias[j])
    else:
        for r in range(rows):
            for j in range(cols):
                out[r, j] = act_scalar(z[r, j] + bias[j], code, slope)


@kernel
def add_bias_activate(z, a, bias, code, slope, out):
    """``out = act(z + a + bias)`` over 2-D blocks (``a`` of the same shape as ``z``)."""
    act_block(z, a, bias, code, slope, out)


@kernel
def mul_deriv(d, h, code, slope, out):
    """``out = d * act'(.)`` where ``h`` is the activation's output (2-D blocks)."""
    rows, cols = d.shape
    if code == TANH or code == TANH_FAST:
        for r in range(rows):
            for j in range(cols):
                # d - d h^2 rather than d (1 - h^2): no float64 literal, so float32 stays float32
                out[r, j] = d[r, j] - d[r, j] * h[r, j] * h[r, j]
    elif code == IDENTITY:
        for r in range(rows):
            for j in range(cols):
                out[r, j] = d[r, j]
    else:
        for r in range(rows):
            for j in range(cols):
                out[r, j] = d[r, j] * deriv_scalar(h[r, j], code, slope)


# The adjoint features (tpgraph.inverses, kind "adjoint"): ``phi`` with ``phi'(h) = act'`` written
# through the output ``h``, so that ``V phi(h)`` has the Jacobian ``V diag(act'(.))`` at ``h``, the
# shape of a layer's transposed Jacobian ``W^T diag(act'(.))``. tanh: ``h - h^3 / 3``; sigmoid:
# ``h^2 / 2 - h^3 / 3``; relu: ``max(h, 0)``; leaky relu: ``h`` or ``slope h``; identity: ``h``.


@kernel
def feature_scalar(x, code, slope):
    """``phi(x)`` of activation ``code`` for one scalar (the antiderivative of ``act'`` in its output)."""
    if code == TANH or code == TANH_FAST:
        return x - x * x * x / 3.0
    if code == SIGMOID:
        return x * x * (0.5 - x / 3.0)
    if code == RELU:
        return x if x > 0 else 0.0 * x
    if code == LEAKY_RELU:
        return x if x > 0 else slope * x
    return x


@kernel
def feature_sum(a, b, code, slope, clamp, out):
    """``out = phi(a + b)`` over 2-D blocks (``b`` may be ``None``: ``phi(a)``; ``out`` may alias ``a``).

    ``code`` IDENTITY is the plain sum (the learned inverse's input). With
    ``clamp`` the argument is first clipped into the activation's range
    (tanh ``[-1, 1]``, sigmoid ``[0, 1]``; the others are unbounded): ``phi``
    is then flat outside it, as the activation is.
    """
    rows, cols = out.shape
    lo, hi = -np.inf, np.inf
    if clamp and (code == TANH or code == TANH_FAST):
        lo, hi = -1.0, 1.0
    elif clamp and code == SIGMOID:
        lo, hi = 0.0, 1.0
    if code == IDENTITY:
        if b is None:
            for r in range(rows):
                for j in range(cols):
                    out[r, j] = a[r, j]
        else:
            for r in range(rows):
                for j in range(cols):
                    out[r, j] = a[r, j] + b[r, j]
    elif (code == TANH or code == TANH_FAST) and not clamp:
        third = out.dtype.type(1.0 / 3.0)
        for r in range(rows):
            for j in range(cols):
                v = a[r, j] if b is None else a[r, j] + b[r, j]
                out[r, j] = v - third * v * v * v
    else:
        for r in range(rows):
            for j in range(cols):
                v = a[r, j] if b is None else a[r, j] + b[r, j]
                out[r, j] = feature_scalar(min(max(v, lo), hi), code, slope)
