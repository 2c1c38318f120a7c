"""Kernels of the parameter-free elementwise kinds: multiply, scale, activation.

All act on 2-D blocks ``[rows, n]`` (a stack's ``[m*B, n]`` view) and write
into ``out``, which may alias an input. The activation kind's forward and
local Jacobian-vector product reuse :mod:`tpgraph.kernels.activations`
(``bias_activate`` with a zero bias, ``mul_deriv``); what is new here is the
elementwise product (forward, and the product of the other inputs times the
displacement) and the exact inverses of the invertible activations.

Inverses (``act_inverse_scalar``), with ``clip`` > 0 keeping them finite at
the ends of the activation's range:

``tanh``
    ``atanh(min(max(h, -1 + clip), 1 - clip))``;
``sigmoid``
    ``log(q / (1 - q))`` with ``q = min(max(h, clip), 1 - clip)``;
``leaky_relu`` (slope != 0)
    ``h`` for ``h > 0``, ``h / slope`` otherwise;
``identity``
    ``h``.

``relu`` has no inverse (every negative input maps to 0); the graph refuses
a ``dtp``/``tp`` edge into a relu activation node before any kernel runs.
"""

import numpy as np

from .activations import LEAKY_RELU, SIGMOID, TANH, TANH_FAST
from .jit import kernel


@kernel
def mul_blocks(a, b, out):
    """``out = a * b`` elementwise (2-D blocks; ``out`` may be ``a`` or ``b``).

    The multiply kind's forward (``h = x_0 * x_1 * ...``, one factor at a
    time) and its local Jacobian-vector product (``P_i = D * prod_{j != i} x_j``).
    """
    rows, cols = out.shape
    for r in range(rows):
        for j in range(cols):
            out[r, j] = a[r, j] * b[r, j]


@kernel
def scale_block(x, c, out):
    """``out = c * x`` elementwise (2-D blocks; ``out`` may be ``x``).

    The scale kind's forward (``h = c x``), its local Jacobian-vector product
    (``P = c D``) and, with ``1 / c``, its exact inverse.
    """
    rows, cols = out.shape
    for r in range(rows):
        for j in range(cols):
            out[r, j] = c * x[r, j]


@kernel
def act_inverse_scalar(h, code, slope, clip):
    """The inverse of activation ``code`` at one output value ``h`` (see the module docstring)."""
    if code == TANH or code == TANH_FAST:
        q = min(max(h, -1.0 + clip), 1.0 - clip)
        return np.arctanh(q)
    if code == SIGMOID:
        q = min(max(h, clip), 1.0 - clip)
        return np.log(q / (1.0 - q))
    if code == LEAKY_RELU:
        return h if h > 0 else h / slope
    return h


@kernel
def act_inverse(h, code, slope, clip, out):
    """``out = act^{-1}(h)`` elementwise (2-D blocks)."""
    rows, cols = h.shape
    for r in range(rows):
        for j in range(cols):
            out[r, j] = act_inverse_scalar(h[r, j], code, slope, clip)


@kernel
def act_inverse_displacement(h, d, ref, difference, code, slope, clip, out):
    """An activation node's proposal through its exact inverse ``g``, as a displacement.

    With ``h`` the node's output, ``d`` its displacement (``h_hat = h + d``)
    and ``ref`` its input's forward value: ``difference`` (``dtp``):
    ``out = g(h + d) - g(h)``; otherwise (``tp``): ``out = g(h + d) - ref``.
    """
    rows, cols = h.shape
    if difference:
        for r in range(rows):
            for j in range(cols):
                out[r, j] = (act_inverse_scalar(h[r, j] + d[r, j], code, slope, clip)
                             - act_inverse_scalar(h[r, j], code, slope, clip))
    else:
        for r in range(rows):
            for j in range(cols):
                out[r, j] = act_inverse_scalar(h[r, j] + d[r, j], code, slope, clip) - ref[r, j]


#: Activations with an exact inverse (``leaky_relu`` only when its slope is not 0).
INVERTIBLE = ("identity", "tanh", "sigmoid", "leaky_relu")
