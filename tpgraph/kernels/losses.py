"""Loss kernels: softmax cross-entropy on logits, and squared error."""

import numpy as np

from .jit import kernel


@kernel
def softmax_xent(z, labels, scale, loss, dz):
    """Cross-entropy of ``softmax(z)`` against integer ``labels``, row by row.

    Writes ``loss[r] = -log softmax(z[r])[labels[r]]`` and
    ``dz[r] = scale * (softmax(z[r]) - onehot(labels[r]))`` (``scale`` is
    ``1/B`` for the mean-over-batch convention, 1 for the sum). Stable: the
    row maximum is subtracted before exponentiation.
    """
    rows, cols = z.shape
    for r in range(rows):
        mx = z[r, 0]
        for j in range(1, cols):
            if z[r, j] > mx:
                mx = z[r, j]
        total = 0.0
        for j in range(cols):
            e = np.exp(z[r, j] - mx)
            dz[r, j] = e
            total += e
        lab = labels[r]
        loss[r] = np.log(total) - (z[r, lab] - mx)
        inv = scale / total
        for j in range(cols):
            dz[r, j] *= inv
        dz[r, lab] -= scale


@kernel
def squared_error(h, t, scale, loss, dh):
    """``loss[r] = 1/2 ||h[r] - t[r]||^2`` and ``dh = scale * (h - t)``."""
    rows, cols = h.shape
    for r in range(rows):
        acc = 0.0
        for j in range(cols):
            e = h[r, j] - t[r, j]
            acc += e * e
            dh[r, j] = scale * e
        loss[r] = 0.5 * acc


@kernel
def argmax_rows(z, out):
    """``out[r] = argmax(z[r])`` (the predicted class; softmax is monotone)."""
    rows, cols = z.shape
    for r in range(rows):
        best = 0
        for j in range(1, cols):
            if z[r, j] > z[r, best]:
                best = j
        out[r] = best
