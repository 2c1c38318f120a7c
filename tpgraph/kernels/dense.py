"""Kernels of dense nodes: one-hot gathers and scatters, and the scans through time.

Layout conventions: a *stack* of ``m`` nodes with the same signature keeps its
values in an array ``[m, B, n]``; a chain stack (``h_k`` takes ``h_{k-1}`` as
an input) keeps an extended buffer ``Hext [m + 1, B, n]`` whose row 0 is the
chain's initial input, so that ``Hext[k]`` is the recurrent input of member
``k`` and ``Hext[k + 1]`` its output. Weights are stored in the paper's
orientation ``W [out, in]``; ``WT`` denotes a contiguous transposed copy.
"""

import numpy as np
from numba import njit

from .activations import (TANH, TANH_FAST, act_block, act_scalar, deriv_scalar, fast_tanh, feature_sum,
                          mul_deriv)
from .blas import mm
from .jit import kernel


@kernel
def gather_rows_add(z, table, idx, accumulate):
    """``z[r, :] (+)= table[idx[r], :]``: a one-hot input times a weight, as a gather.

    Adds into ``z`` when ``accumulate``, overwrites it otherwise.
    """
    rows, cols = z.shape
    for r in range(rows):
        i = idx[r]
        if accumulate:
            for j in range(cols):
                z[r, j] += table[i, j]
        else:
            for j in range(cols):
                z[r, j] = table[i, j]


@kernel
def scatter_cols_add(grad, idx, delta):
    """``grad[:, idx[r]] += delta[r, :]``: the gradient of ``W`` for a one-hot input."""
    rows, cols = delta.shape
    for r in range(rows):
        i = idx[r]
        for j in range(cols):
            grad[j, i] += delta[r, j]


@kernel
def scatter_rows_add(dst, idx, src):
    """``dst[idx[k]] += src[k]`` over the leading axis (3-D blocks)."""
    for k in range(src.shape[0]):
        dst[idx[k]] += src[k]


@kernel
def gather_rows(dst, src, idx):
    """``dst[k] = src[idx[k]]`` over the leading axis (3-D blocks)."""
    for k in range(idx.shape[0]):
        dst[k] = src[idx[k]]


@kernel
def gather_or_zero(dst, src, idx):
    """``dst[k] = src[idx[k]]``, zeros where ``idx[k] < 0`` (3-D blocks; a joint inverse's missing context)."""
    for k in range(idx.shape[0]):
        if idx[k] < 0:
            dst[k] = 0
        else:
            dst[k] = src[idx[k]]


@kernel
def gather_sum_or_zero(dst, a, b, idx):
    """``dst[k] = a[idx[k]] + b[idx[k]]`` (a value plus its displacement: a target), zeros where ``idx[k] < 0``."""
    m, rows, cols = dst.shape
    for k in range(m):
        i = idx[k]
        if i < 0:
            dst[k] = 0
            continue
        for r in range(rows):
            for j in range(cols):
                dst[k, r, j] = a[i, r, j] + b[i, r, j]


@kernel
def context_activate(z, pre, idx, code, slope):
    """``z[k] = act(z[k] + pre[idx[k]])``, zeros where ``idx[k] < 0``: siblings' values at a perturbed input.

    ``z [m, B, n]`` holds ``W_s eps`` (the perturbation through the sibling's
    weight), ``pre`` the siblings' pre-activations at the forward values.
    """
    m, rows, cols = z.shape
    for k in range(m):
        i = idx[k]
        if i < 0:
            z[k] = 0
            continue
        for r in range(rows):
            for j in range(cols):
                z[k, r, j] = act_scalar(z[k, r, j] + pre[i, r, j], code, slope)


@kernel
def scan_forward(hext, a, bias, wt, code, slope, tmp):
    """Forward through a chain: ``hext[k+1] = act(a[k] + hext[k] @ wt + bias)``.

    ``a [m, B, n]`` is the non-recurrent part of the pre-activation (the other
    inputs, computed for all members in one batched product), ``wt`` the
    transposed recurrent weight ``[n_in, n]``, ``tmp [B, n]`` scratch.
    """
    m = a.shape[0]
    for k in range(m):
        np.dot(hext[k], wt, tmp)
        act_block(tmp, a[k], bias, code, slope, hext[k + 1])


@kernel
def scan_gradient(d, hext, w, code, slope, inv_count, start, stop, p, delta):
    """Credit back through a chain with the ``gradient`` rule (BPTT's scan).

    For ``k = start .. stop`` (descending): ``delta[k] = d[k] * act'(h_k)``;
    ``p[k] = delta[k] @ w`` (the displacement proposed to member ``k-1``, or
    to the chain's initial input for ``k = 0``); then member ``k-1`` merges it:
    ``d[k-1] = (d[k-1] + p[k]) * inv_count[k-1]`` (``inv_count`` is 1 for the
    linear merge, ``1/count`` for the mean merge). ``d[start]`` must be final.
    """
    mul_deriv(d[start], hext[start + 1], code, slope, delta[start])
    for k in range(start, stop - 1, -1):
        np.dot(delta[k], w, p[k])
        if k > stop:  # merge into member k-1 and take its delta in the same pass
            merge_deriv(d[k - 1], p[k], inv_count[k - 1], hext[k], code, slope, delta[k - 1])
        elif k > 0:
            _merge_into(d[k - 1], p[k], inv_count[k - 1])


@kernel
def scan_inverse(d, hext, vt, og, gf, gcode, slope, fcode, fslope, fclamp, inv_count, start, stop, difference, p,
                 tmp):
    """Credit back through a chain with a learned inverse (``dtp`` or ``tp``).

    ``g(h) = act_g(phi(h) @ vt + og[k])``, ``phi`` the features of code
    ``fcode`` (:func:`~tpgraph.kernels.activations.feature_sum`, clamped to
    the activation's range with ``fclamp``: the identity for the ``learned``
    kind, the adjoint features for ``adjoint``). For ``k = start .. stop`` the proposal to
    the recurrent input is ``g(h_k + d[k])`` and its displacement ``p[k]`` is
    ``g(h_k + d[k]) - gf[k]`` for ``dtp`` (``difference=True``, ``gf[k]`` the
    inverse at the forward value) or ``g(h_k + d[k]) - h_{k-1}`` for ``tp``.
    Member ``k-1`` then merges it as in :func:`scan_gradient`.
    """
    for k in range(start, stop - 1, -1):
        feature_sum(hext[k + 1], d[k], fcode, fslope, fclamp, tmp)  # phi(h_hat_k); for IDENTITY h_hat_k
        pk = p[k]
        np.dot(tmp, vt, pk)
        inverse_finish(pk, og[k], gf[k] if difference else hext[k], gcode, slope)
        if k > 0:
            _merge_into(d[k - 1], pk, inv_count[k - 1])


@kernel
def merge_deriv(d, p, scale, h, code, slope, delta):
    """``d = (d + p) * scale`` then ``delta = d * act'(h)``, in one pass (2-D blocks)."""
    rows, cols = d.shape
    if code == TANH or code == TANH_FAST:
        for r in range(rows):
            for j in range(cols):
                v = (d[r, j] + p[r, j]) * scale
                d[r, j] = v
                delta[r, j] = v - v * h[r, j] * h[r, j]
    else:
        for r in range(rows):
            for j in range(cols):
                v = (d[r, j] + p[r, j]) * scale
                d[r, j] = v
                delta[r, j] = v * deriv_scalar(h[r, j], code, slope)


@kernel
def _merge_into(dst, src, scale):
    rows, cols = dst.shape
    for r in range(rows):
        for j in range(cols):
            dst[r, j] = (dst[r, j] + src[r, j]) * scale


@kernel
def inverse_finish(p, og, ref, code, slope):
    """``p = act(p + og) - ref``: an inverse's proposal as a displacement (2-D blocks)."""
    rows, cols = p.shape
    if code == TANH_FAST:
        for r in range(rows):
            for j in range(cols):
                p[r, j] = fast_tanh(p[r, j] + og[r, j]) - ref[r, j]
    elif code == TANH:
        for r in range(rows):
            for j in range(cols):
                p[r, j] = np.tanh(p[r, j] + og[r, j]) - ref[r, j]
    else:
        for r in range(rows):
            for j in range(cols):
                p[r, j] = act_scalar(p[r, j] + og[r, j], code, slope) - ref[r, j]


@kernel
def inverse_residual(g, x, code, slope, dg, loss):
    """Reconstruction error of an inverse, member by member.

    ``g, x, dg [m, B, n]``: ``dg = (g - x) * act'(g)`` (the gradient of
    ``1/2 ||g - x||^2`` with respect to the inverse's pre-activation) and
    ``loss[k] = 1/2 ||g[k] - x[k]||^2`` summed over the batch.
    """
    m, rows, cols = g.shape
    tanh_like = code == TANH or code == TANH_FAST
    for k in range(m):
        acc = 0.0
        for r in range(rows):
            if tanh_like:
                for j in range(cols):
                    e = g[k, r, j] - x[k, r, j]
                    acc += e * e
                    dg[k, r, j] = e - e * g[k, r, j] * g[k, r, j]
            else:
                for j in range(cols):
                    e = g[k, r, j] - x[k, r, j]
                    acc += e * e
                    dg[k, r, j] = e * deriv_scalar(g[k, r, j], code, slope)
        loss[k] = 0.5 * acc


@kernel
def difference_residual(gn, gf, noise, sigma, code, slope, dgn, dgf, loss):
    """Difference reconstruction error of an inverse (Meulemans et al. 2020), member by member.

    ``gn = g(f(x + sigma noise))``, ``gf = g(f(x))``, all ``[m, B, n]``; with
    ``r = gn - gf - sigma noise``: ``dgn = r * act'(gn)`` and ``dgf = -r *
    act'(gf)`` (the gradients of ``1/2 ||r||^2`` with respect to the two
    pre-activations of the inverse) and ``loss[k] = 1/2 ||r[k]||^2`` summed
    over the batch.
    """
    m, rows, cols = gn.shape
    tanh_like = code == TANH or code == TANH_FAST
    for k in range(m):
        acc = 0.0
        for r in range(rows):
            if tanh_like:
                for j in range(cols):
                    a, c = gn[k, r, j], gf[k, r, j]
                    e = a - c - sigma * noise[k, r, j]
                    acc += e * e
                    dgn[k, r, j] = e - e * a * a
                    dgf[k, r, j] = e * c * c - e
            else:
                for j in range(cols):
                    a, c = gn[k, r, j], gf[k, r, j]
                    e = a - c - sigma * noise[k, r, j]
                    acc += e * e
                    dgn[k, r, j] = e * deriv_scalar(a, code, slope)
                    dgf[k, r, j] = -e * deriv_scalar(c, code, slope)
        loss[k] = 0.5 * acc


@kernel
def jacobian_residual(gn, gf, ge, noise, sigma, code, slope, dgn, dgf, dge, loss):
    """The Jacobian-matching loss of an inverse (Ernoult et al. 2022), member by member.

    ``gn = g(f(x + sigma noise))``, ``gf = g(f(x))`` and ``ge = g(f(x) +
    eta)``, all ``[m, B, n]``. With ``eps = sigma noise`` and ``d = ge - gf``
    the loss is ``L = (-eps . (gn - gf) + 1/2 ||d||^2) / sigma^2``; its
    gradients with respect to the three pre-activations of the inverse are
    ``dgn = -eps act'(gn) / sigma^2``, ``dge = d act'(ge) / sigma^2`` and
    ``dgf = (eps - d) act'(gf) / sigma^2``; ``loss[k]`` is ``L`` summed over
    the batch.
    """
    m, rows, cols = gn.shape
    s2 = 1.0 / (sigma * sigma)
    for k in range(m):
        acc = 0.0
        for r in range(rows):
            for j in range(cols):
                a, c, e = gn[k, r, j], gf[k, r, j], ge[k, r, j]
                eps = sigma * noise[k, r, j]
                d = e - c
                acc += -eps * (a - c) + 0.5 * d * d
                dgn[k, r, j] = -eps * s2 * deriv_scalar(a, code, slope)
                dge[k, r, j] = d * s2 * deriv_scalar(e, code, slope)
                dgf[k, r, j] = (eps - d) * s2 * deriv_scalar(c, code, slope)
        loss[k] = acc * s2


@kernel
def sum_squares(d, out):
    """``out[k] = 1/2 ||d[k]||^2`` over a ``[m, B, n]`` block (local losses)."""
    m, rows, cols = d.shape
    for k in range(m):
        acc = 0.0
        for r in range(rows):
            for j in range(cols):
                acc += d[k, r, j] * d[k, r, j]
        out[k] = 0.5 * acc


@kernel
def add_noise(x, noise, sigma, out):
    """``out = x + sigma * noise`` (flat blocks)."""
    for i in range(x.size):
        out.flat[i] = x.flat[i] + sigma * noise.flat[i]


@kernel
def all_finite(a):
    """True if every entry of ``a`` is finite (no allocation)."""
    flat = a.ravel()
    for i in range(flat.size):
        if not np.isfinite(flat[i]):
            return False
    return True


# The same three scans with their products through NumPy's OpenBLAS
# (see tpgraph.kernels.blas); the engine uses these when it found that BLAS.


@kernel
def scan_forward_cblas(gemm, one, zero, hext, a, bias, wt, code, slope, tmp):
    """:func:`scan_forward` with ``gemm`` for the products."""
    for k in range(a.shape[0]):
        mm(gemm, hext[k], wt, tmp, one, zero)
        act_block(tmp, a[k], bias, code, slope, hext[k + 1])


@kernel
def scan_gradient_cblas(gemm, one, zero, d, hext, w, code, slope, inv_count, start, stop, p, delta):
    """:func:`scan_gradient` with ``gemm`` for the products."""
    mul_deriv(d[start], hext[start + 1], code, slope, delta[start])
    for k in range(start, stop - 1, -1):
        mm(gemm, delta[k], w, p[k], one, zero)
        if k > stop:  # merge into member k-1 and take its delta in the same pass
            merge_deriv(d[k - 1], p[k], inv_count[k - 1], hext[k], code, slope, delta[k - 1])
        elif k > 0:
            _merge_into(d[k - 1], p[k], inv_count[k - 1])


@kernel
def scan_inverse_cblas(gemm, one, zero, d, hext, vt, og, gf, gcode, slope, fcode, fslope, fclamp, inv_count, start,
                       stop, difference, p, tmp):
    """:func:`scan_inverse` with ``gemm`` for the products."""
    for k in range(start, stop - 1, -1):
        feature_sum(hext[k + 1], d[k], fcode, fslope, fclamp, tmp)  # phi(h_hat_k); for IDENTITY h_hat_k
        pk = p[k]
        mm(gemm, tmp, vt, pk, one, zero)
        inverse_finish(pk, og[k], gf[k] if difference else hext[k], gcode, slope)
        if k > 0:
            _merge_into(d[k - 1], pk, inv_count[k - 1])


@kernel
def negate_colsum(delta, colsum):
    """``delta = -delta`` in place, and ``colsum += sum over rows of the new delta`` (one pass).

    Turns ``D * act'`` into the local loss's gradient at the pre-activation
    and accumulates the bias gradient at the same time.
    """
    rows, cols = delta.shape
    for r in range(rows):
        for j in range(cols):
            v = -delta[r, j]
            delta[r, j] = v
            colsum[j] += v


@kernel
def snapshot(param, grad, old):
    """``old = param`` (flat copy); returns whether every entry of ``grad`` is finite."""
    p, g, o = param.ravel(), grad.ravel(), old.ravel()  # views: all are C-contiguous
    bad = 0
    for i in range(p.size):
        o[i] = p[i]
        bad += not np.isfinite(g[i])
    return bad == 0


@kernel
def difference(param, old):
    """``old = param - old`` (the update just applied); returns whether ``param`` is finite."""
    p, o = param.ravel(), old.ravel()  # views: both are C-contiguous
    bad = 0
    for i in range(p.size):
        v = p[i]
        o[i] = v - o[i]
        bad += not np.isfinite(v)
    return bad == 0


# The scans with a compiled merge strategy (tpgraph.merges.JitMerge) in place of the
# scaled accumulation: ``merge(h, d, p, k, params)`` writes member k's merged displacement
# into ``d`` from the displacement accumulated from its other consumers (``d`` on entry)
# and the proposal ``p`` of member k + 1. Numba compiles one specialisation per merge,
# once per process: these kernels take a function, so they are not cached on disk (the
# cache index would name the user's module), the one exception to ``cache=True``.
merge_kernel = njit(cache=False, error_model="numpy", nogil=True)


@merge_kernel
def merge_members(merge, params, h, d, zeros, members):
    """Finalise the merge of the given members with nothing from a chain: ``merge(h[k], d[k], 0, k)``."""
    for i in range(members.shape[0]):
        k = members[i]
        merge(h[k], d[k], zeros, k, params)


@merge_kernel
def scan_gradient_merge(merge, params, d, hext, w, code, slope, start, stop, p, delta):
    """:func:`scan_gradient` with a compiled merge of member ``k - 1``."""
    mul_deriv(d[start], hext[start + 1], code, slope, delta[start])
    for k in range(start, stop - 1, -1):
        np.dot(delta[k], w, p[k])
        if k > 0:
            merge(hext[k], d[k - 1], p[k], k - 1, params)
            if k > stop:
                mul_deriv(d[k - 1], hext[k], code, slope, delta[k - 1])


@merge_kernel
def scan_gradient_merge_cblas(gemm, one, zero, merge, params, d, hext, w, code, slope, start, stop, p, delta):
    """:func:`scan_gradient_merge` with ``gemm`` for the products."""
    mul_deriv(d[start], hext[start + 1], code, slope, delta[start])
    for k in range(start, stop - 1, -1):
        mm(gemm, delta[k], w, p[k], one, zero)
        if k > 0:
            merge(hext[k], d[k - 1], p[k], k - 1, params)
            if k > stop:
                mul_deriv(d[k - 1], hext[k], code, slope, delta[k - 1])


@merge_kernel
def scan_inverse_merge(merge, params, d, hext, vt, og, gf, gcode, slope, fcode, fslope, fclamp, start, stop,
                       difference, p, tmp):
    """:func:`scan_inverse` with a compiled merge of member ``k - 1``."""
    for k in range(start, stop - 1, -1):
        feature_sum(hext[k + 1], d[k], fcode, fslope, fclamp, tmp)
        pk = p[k]
        np.dot(tmp, vt, pk)
        inverse_finish(pk, og[k], gf[k] if difference else hext[k], gcode, slope)
        if k > 0:
            merge(hext[k], d[k - 1], pk, k - 1, params)


@merge_kernel
def scan_inverse_merge_cblas(gemm, one, zero, merge, params, d, hext, vt, og, gf, gcode, slope, fcode, fslope, fclamp,
                             start, stop, difference, p, tmp):
    """:func:`scan_inverse_merge` with ``gemm`` for the products."""
    for k in range(start, stop - 1, -1):
        feature_sum(hext[k + 1], d[k], fcode, fslope, fclamp, tmp)
        pk = p[k]
        mm(gemm, tmp, vt, pk, one, zero)
        inverse_finish(pk, og[k], gf[k] if difference else hext[k], gcode, slope)
        if k > 0:
            merge(hext[k], d[k - 1], pk, k - 1, params)


# The analytic regularised inverse of a tanh dense node (Roulet & Harchaoui; tpgraph.inverses):
# ``g(h) = (atanh(clip(h)) - og) @ mt`` with ``og`` the rest of the node's pre-activation (the
# other inputs through their forward weights, plus the forward bias) and ``mt`` the transposed
# ``(W^T W + reg I)^-1 W^T``, rebuilt from the live weight before every target pass. ``lim`` is
# ``1 - clip``: arguments of atanh are clipped to ``[-lim, lim]``.


@kernel
def atanh_residual(h, d, og, lim, use_d, out):
    """``out = atanh(clip(h (+ d), -lim, lim)) - og`` over 2-D blocks (``d`` is read only if ``use_d``).

    atanh as ``log((1 + v) / (1 - v)) / 2``: nine times faster here than
    Numba's ``np.arctanh`` (a scalar libm call), exact to the dtype's
    epsilon in absolute terms, which is what counts before ``og`` is
    subtracted.
    """
    rows, cols = out.shape
    half, one = out.dtype.type(0.5), out.dtype.type(1)
    for r in range(rows):
        for j in range(cols):
            v = h[r, j] + d[r, j] if use_d else h[r, j]
            if v > lim:
                v = lim
            elif v < -lim:
                v = -lim
            out[r, j] = half * np.log((one + v) / (one - v)) - og[r, j]


@kernel
def subtract_into(p, ref):
    """``p -= ref`` over 2-D blocks (an inverse's proposal as a displacement)."""
    rows, cols = p.shape
    for r in range(rows):
        for j in range(cols):
            p[r, j] -= ref[r, j]


@kernel
def scan_analytic(d, hext, mt, og, gf, lim, inv_count, start, stop, difference, p, tmp):
    """Credit back through a chain with the analytic inverse (``dtp`` or ``tp``).

    For ``k = start .. stop`` (descending): the target ``t = h_k + d[k]``,
    ``tmp = atanh(clip(t)) - og[k]``, ``p[k] = tmp @ mt - ref`` with ``ref =
    gf[k] = g(h_k)`` for ``dtp`` (``difference=True``) or ``h_{k-1}`` for
    ``tp``; then member ``k-1`` merges it as in :func:`scan_gradient`.
    """
    for k in range(start, stop - 1, -1):
        atanh_residual(hext[k + 1], d[k], og[k], lim, True, tmp)
        pk = p[k]
        np.dot(tmp, mt, pk)
        subtract_into(pk, gf[k] if difference else hext[k])
        if k > 0:
            _merge_into(d[k - 1], pk, inv_count[k - 1])


@kernel
def scan_analytic_cblas(gemm, one, zero, d, hext, mt, og, gf, lim, inv_count, start, stop, difference, p, tmp):
    """:func:`scan_analytic` with ``gemm`` for the products."""
    for k in range(start, stop - 1, -1):
        atanh_residual(hext[k + 1], d[k], og[k], lim, True, tmp)
        pk = p[k]
        mm(gemm, tmp, mt, pk, one, zero)
        subtract_into(pk, gf[k] if difference else hext[k])
        if k > 0:
            _merge_into(d[k - 1], pk, inv_count[k - 1])


@merge_kernel
def scan_analytic_merge(merge, params, d, hext, mt, og, gf, lim, start, stop, difference, p, tmp):
    """:func:`scan_analytic` with a compiled merge of member ``k - 1``."""
    for k in range(start, stop - 1, -1):
        atanh_residual(hext[k + 1], d[k], og[k], lim, True, tmp)
        pk = p[k]
        np.dot(tmp, mt, pk)
        subtract_into(pk, gf[k] if difference else hext[k])
        if k > 0:
            merge(hext[k], d[k - 1], pk, k - 1, params)


@merge_kernel
def scan_analytic_merge_cblas(gemm, one, zero, merge, params, d, hext, mt, og, gf, lim, start, stop, difference,
                              p, tmp):
    """:func:`scan_analytic_merge` with ``gemm`` for the products."""
    for k in range(start, stop - 1, -1):
        atanh_residual(hext[k + 1], d[k], og[k], lim, True, tmp)
        pk = p[k]
        mm(gemm, tmp, mt, pk, one, zero)
        subtract_into(pk, gf[k] if difference else hext[k])
        if k > 0:
            merge(hext[k], d[k - 1], pk, k - 1, params)
