"""Hand-fused reference training steps for the paper's simple RNN (SRN).

One ``@njit(cache=True, error_model="numpy")`` function per step:

* :func:`fused_bptt_step` -- forward, exact BPTT gradients, Adam on
  ``W_xh, W_h, b_h, W_hy, b_y`` with one learning rate;
* :func:`fused_tp_step` -- forward, target propagation (Dai & Chin, linear
  merge of displacements through the learned inverse), inverse training
  (optionally with denoising noise), Adam per group (forward / inverse /
  output) with separate learning rates.

They serve as the speed (and correctness) reference for the tpgraph engine:
everything without a sequential dependency is one BLAS product over all
``L*B`` rows, only the recurrences are scans of ``[B,H] @ [H,H]`` products,
the hot loops use contiguous transposed weight copies, and float32 uses a
vectorisable rational tanh (float64 uses exact ``np.tanh`` so gradients can
be checked by finite differences). All gradients of a batch are computed
before any parameter changes.

Matrix products (all of them: the per-time-step recurrent products and the
batched ones) go through one of two BLAS paths, chosen by the last argument
``gemm`` of the step functions (each step is still one compiled function;
Numba specialises it on the argument's type):

* ``gemm`` a ctypes ``cblas_?gemm`` of NumPy's own OpenBLAS (from
  ``tpgraph.kernels.blas.gemm_for``, the same binding the engine's scans use),
  called through ``tpgraph.kernels.blas.mm`` -- ``FusedSRN(blas="cblas")``,
  the default where that BLAS is found;
* ``gemm`` None: ``np.dot`` inside Numba, which calls SciPy's OpenBLAS
  (slower for the small recurrent products on the machines measured) --
  ``FusedSRN(blas="numba")``.

That binding is the only thing taken from tpgraph; without tpgraph only the
``np.dot`` path exists.

Mathematics (row vectors over the batch, paper orientation of parameters):
``h_t = tanh(W_xh[:, x_t].T + b_h + h_{t-1} @ W_h.T)``,
``p_t = softmax(h_t @ W_hy.T + b_y)``, ``loss = sum_t mean_b CE(p_t, y_t)``.
See ``benchmarks/README.md``.
"""

import numpy as np
from numba import njit, types
from numba.core.errors import TypingError
from numba.extending import overload

try:  # NumPy's own OpenBLAS, bound exactly as the engine binds it
    from tpgraph.kernels.blas import NO_TRANS, ROW_MAJOR, gemm_for, mm
except Exception:  # noqa: BLE001 -- tpgraph not importable (or broken): np.dot only
    ROW_MAJOR, NO_TRANS, mm = np.int32(101), np.int32(111), None

    def gemm_for(dtype):
        return None

TRANS = np.int32(112)  # CblasTrans

# ----------------------------------------------------------------------------
# Fast tanh (float32): tanh(x) ~ x P(x^2) / Q(x^2) on |x| <= _CLAMP, clamped
# outside. Coefficients from benchmarks/fit_tanh.py (linearised least squares
# with Lawson reweighting towards minimax absolute error). Max abs error
# evaluated in float32: ~3.7e-7 (float64 evaluation: ~2e-8).
# ----------------------------------------------------------------------------
_COEF_P = (
    0.999999906368346,
    0.13373198271583625,
    0.003486582543020573,
    2.0471840009729548e-05,
    1.3184234882371398e-08,
)
_COEF_Q = (
    0.4670649513772946,
    0.025841981748508814,
    0.0003271386395952444,
    7.702668436085704e-07,
)
_CLAMP = 9.0

# float32 constants: Numba freezes NumPy scalar globals with their own type,
# so the whole evaluation stays in float32 (and vectorises 16-wide).
_P0 = np.float32(_COEF_P[0])
_P1 = np.float32(_COEF_P[1])
_P2 = np.float32(_COEF_P[2])
_P3 = np.float32(_COEF_P[3])
_P4 = np.float32(_COEF_P[4])
_Q1 = np.float32(_COEF_Q[0])
_Q2 = np.float32(_COEF_Q[1])
_Q3 = np.float32(_COEF_Q[2])
_Q4 = np.float32(_COEF_Q[3])
_ONE32 = np.float32(1.0)
_C32 = np.float32(_CLAMP)
_MC32 = np.float32(-_CLAMP)


def act(x):
    """tanh used by the fused steps: rational approximation for float32,
    exact ``np.tanh`` otherwise. (Pure-Python version; inside Numba the
    overload below is used.)"""
    x = np.asarray(x)
    if x.dtype != np.float32:
        return np.tanh(x)
    c = np.clip(x, _MC32, _C32)
    u = c * c
    p = (((_P4 * u + _P3) * u + _P2) * u + _P1) * u + _P0
    q = (((_Q4 * u + _Q3) * u + _Q2) * u + _Q1) * u + _ONE32
    return np.clip(c * p / q, -_ONE32, _ONE32)


@overload(act, jit_options={"error_model": "numpy"})
def _act_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:

        def impl32(x):
            c = x
            if c > _C32:
                c = _C32
            if c < _MC32:
                c = _MC32
            u = c * c
            p = (((_P4 * u + _P3) * u + _P2) * u + _P1) * u + _P0
            q = (((_Q4 * u + _Q3) * u + _Q2) * u + _Q1) * u + _ONE32
            r = c * p / q
            # rounding can overshoot 1 by an ulp: keep |tanh| <= 1
            if r > _ONE32:
                r = _ONE32
            if r < -_ONE32:
                r = -_ONE32
            return r

        return impl32
    if isinstance(x, types.Float):
        return lambda x: np.tanh(x)
    return None


@njit(cache=True, error_model="numpy")
def act_array(src, dst):
    """``dst[i] = act(src[i])`` over 1-D arrays (used by the accuracy test and
    the micro-benchmark)."""
    for i in range(src.shape[0]):
        dst[i] = act(src[i])


# ----------------------------------------------------------------------------
# Small helpers (compiled once per signature, called from the step kernels)
# ----------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def _act_sum(a, b, out):
    """out = act(a + b) elementwise over 2-D C arrays (flat loop: vectorises).
    Every activation of the steps goes through here, so the vectorised tanh
    is compiled once per dtype (it dominates compile time)."""
    af = a.reshape(a.size)
    bf = b.reshape(b.size)
    of = out.reshape(out.size)
    for i in range(of.shape[0]):
        of[i] = act(af[i] + bf[i])


def _mm(gemm, a, b, out, one, zero):
    """``out = a @ b`` (2-D, C-contiguous): through ``mm(gemm, ...)`` (NumPy's
    OpenBLAS) when ``gemm`` is a cblas_?gemm, through ``np.dot`` (SciPy's
    OpenBLAS) when it is None. ``one``/``zero``: scalars of the array dtype.
    Only callable from compiled code (the overload below picks the path at
    compile time)."""
    raise NotImplementedError("_mm is only callable from Numba-compiled code")


def _mm_tn(gemm, a, b, out, one, zero):
    """``out = a.T @ b`` (a, b C-contiguous; BLAS transposes, no copy); paths
    as :func:`_mm`."""
    raise NotImplementedError("_mm_tn is only callable from Numba-compiled code")


def _check_c(*arrays):
    for t in arrays:
        if not (isinstance(t, types.Array) and t.ndim == 2 and t.layout == "C"):
            raise TypingError(f"the cblas product needs C-contiguous 2-D arrays, got {t}")


@overload(_mm, jit_options={"error_model": "numpy"})
def _mm_overload(gemm, a, b, out, one, zero):
    if isinstance(gemm, (types.NoneType, types.Omitted)):
        def impl_dot(gemm, a, b, out, one, zero):
            np.dot(a, b, out)

        return impl_dot
    _check_c(a, b, out)

    def impl_cblas(gemm, a, b, out, one, zero):
        mm(gemm, a, b, out, one, zero)

    return impl_cblas


@overload(_mm_tn, jit_options={"error_model": "numpy"})
def _mm_tn_overload(gemm, a, b, out, one, zero):
    if isinstance(gemm, (types.NoneType, types.Omitted)):
        def impl_dot(gemm, a, b, out, one, zero):
            np.dot(a.T, b, out)

        return impl_dot
    _check_c(a, b, out)

    def impl_cblas(gemm, a, b, out, one, zero):
        # a is [k, m] row-major: op(A) = A^T is m x k with lda = m
        k, m = a.shape
        n = b.shape[1]
        gemm(ROW_MAJOR, TRANS, NO_TRANS, m, n, k, one, a.ctypes.data, m, b.ctypes.data, n, zero,
             out.ctypes.data, n)

    return impl_cblas


@njit(cache=True, error_model="numpy")
def _transpose_into(src, dst):
    """dst = src.T for 2-D C arrays, blocked."""
    n, m = src.shape
    bs = 32
    for i0 in range(0, n, bs):
        i1 = min(i0 + bs, n)
        for j0 in range(0, m, bs):
            j1 = min(j0 + bs, m)
            for i in range(i0, i1):
                for j in range(j0, j1):
                    dst[j, i] = src[i, j]


@njit(cache=True, error_model="numpy")
def _colsum_into(a, out):
    """out[j] = sum_i a[i, j]."""
    out[:] = 0
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            out[j] += a[i, j]


@njit(cache=True, error_model="numpy")
def _adam(p, g, m, v, b1, c1, b2, c2, step, eps):
    """Adam on one array (flat views): m, v moments; ``step`` and ``eps`` are
    the bias-corrected step size lr*sqrt(1-b2^t)/(1-b1^t) and eps*sqrt(1-b2^t)
    (Kingma & Ba's efficient form, algebraically PyTorch's)."""
    pf = p.reshape(p.size)
    gf = g.reshape(g.size)
    mf = m.reshape(m.size)
    vf = v.reshape(v.size)
    for i in range(pf.shape[0]):
        gi = gf[i]
        mi = b1 * mf[i] + c1 * gi
        vi = b2 * vf[i] + c2 * gi * gi
        mf[i] = mi
        vf[i] = vi
        pf[i] -= step * mi / (np.sqrt(vi) + eps)


@njit(cache=True, error_model="numpy")
def _forward(x, y, Wxh, Wh, bh, Why, by, WxhT, WhT, WhyT, hs, A, P, tmp, gemm, one, zero):
    """Forward pass, softmax and the loss. Leaves h_0..h_L in ``hs``
    [L+1,B,H], input pre-activations ``a_t`` in ``A`` [L,B,H] and
    probabilities in ``P`` [L,B,n_out]; returns sum_t sum_b CE (log-sum-exp
    form, accumulated in float64; not yet divided by B)."""
    L, B = x.shape
    H = Wh.shape[0]
    n_out = Why.shape[0]
    _transpose_into(Wxh, WxhT)
    _transpose_into(Wh, WhT)
    _transpose_into(Why, WhyT)
    # a_t = W_xh[:, x_t].T + b_h: a gather of rows of W_xh.T
    for t in range(L):
        for b in range(B):
            row = WxhT[x[t, b]]
            for j in range(H):
                A[t, b, j] = row[j] + bh[j]
    # recurrence: the only sequential part
    hs[0] = 0
    tmp[:] = 0  # h_0 = 0: no product at t = 1
    for t in range(L):
        if t > 0:
            _mm(gemm, hs[t], WhT, tmp, one, zero)
        _act_sum(A[t], tmp, hs[t + 1])
    # output layer over all L*B rows at once
    Hall = hs[1:].reshape(L * B, H)
    P2 = P.reshape(L * B, n_out)
    _mm(gemm, Hall, WhyT, P2, one, zero)
    nll = 0.0
    for r in range(L * B):
        z = P2[r]
        mx = z[0] + by[0]
        for k in range(n_out):
            z[k] += by[k]
            if z[k] > mx:
                mx = z[k]
        zy = z[y[r // B, r % B]]
        s = 0.0
        for k in range(n_out):
            e = np.exp(z[k] - mx)
            z[k] = e
            s += e
        inv = 1.0 / s
        for k in range(n_out):
            z[k] *= inv
        nll += np.log(s) + mx - zy
    return nll


@njit(cache=True, error_model="numpy")
def _output_grads(y, Why, hs, P, scale, gWhy, gby, dH, gemm, one, zero):
    """dz = (p - onehot(y)) * scale in place in P (scale = 1/B); output layer
    gradients dW_hy = sum dz_t.T @ h_t, db_y; dH = dz @ W_hy [L,B,H]."""
    L, B = y.shape
    H = Why.shape[1]
    n_out = Why.shape[0]
    P2 = P.reshape(L * B, n_out)
    for t in range(L):
        for b in range(B):
            r = t * B + b
            P2[r, y[t, b]] -= 1
            for k in range(n_out):
                P2[r, k] *= scale
    Hall = hs[1:].reshape(L * B, H)
    _mm_tn(gemm, P2, Hall, gWhy, one, zero)
    _colsum_into(P2, gby)
    _mm(gemm, P2, Why, dH.reshape(L * B, H), one, zero)


@njit(cache=True, error_model="numpy")
def _forward_input_grads(x, hs, dA, gWh, gbh, gWxh, gWxhT, gemm, one, zero):
    """From pre-activation gradients ``dA`` [L,B,H] (BPTT's da_t, TP's
    delta_t): dW_h = sum dA_t.T @ h_{t-1}, db_h, dW_xh (scatter-add)."""
    L, B = x.shape
    H = hs.shape[2]
    dA2 = dA.reshape(L * B, H)
    Hprev = hs[:-1].reshape(L * B, H)
    _mm_tn(gemm, dA2, Hprev, gWh, one, zero)
    _colsum_into(dA2, gbh)
    gWxhT[:] = 0
    for t in range(L):
        for b in range(B):
            row = gWxhT[x[t, b]]
            for j in range(H):
                row[j] += dA[t, b, j]
    _transpose_into(gWxhT, gWxh)


# ----------------------------------------------------------------------------
# The two step kernels
# ----------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def fused_bptt_step(x, y, params, grads, m, v, scratch, hyper, update, gemm):
    """One BPTT training step. Returns the loss sum_t mean_b CE(p_t, y_t).

    x, y: int64 [L,B]. params, grads, m, v: tuples
    (W_xh, W_h, b_h, W_hy, b_y, V_h, c_h) (the last two unused here).
    scratch: tuple made by :class:`FusedSRN` (see ``_alloc_scratch``).
    hyper: dtype array [b1, 1-b1, b2, 1-b2, step_f, eps_f, step_g, eps_g,
    step_y, eps_y, alpha, sigma, 1/B, 1, 0] (bias-corrected Adam step sizes
    per group; BPTT uses the forward group's for W_xh/W_h/b_h and the output
    group's for W_hy/b_y). update: False leaves parameters untouched (the
    gradients are still written to ``grads``). gemm: the cblas_?gemm of
    NumPy's OpenBLAS for the products, or None for ``np.dot`` (see the module
    docstring).
    """
    Wxh, Wh, bh, Why, by = params[0], params[1], params[2], params[3], params[4]
    gWxh, gWh, gbh, gWhy, gby = grads[0], grads[1], grads[2], grads[3], grads[4]
    (hs, A, P, dH, D, OG, G, R, tmp, tmp2,
     WxhT, WhT, WhyT, VhT, gWxhT, noise) = scratch
    L, B = x.shape
    H = Wh.shape[0]
    one, zero = hyper[13], hyper[14]

    nll = _forward(x, y, Wxh, Wh, bh, Why, by, WxhT, WhT, WhyT, hs, A, P, tmp, gemm, one, zero)
    _output_grads(y, Why, hs, P, hyper[12], gWhy, gby, dH, gemm, one, zero)

    # backward scan: da_t = (dH_t + da_{t+1} @ W_h) * (1 - h_t^2), in place
    for t in range(L - 1, -1, -1):
        ht = hs[t + 1]
        dt = dH[t]
        if t < L - 1:
            _mm(gemm, dH[t + 1], Wh, tmp, one, zero)
            for b in range(B):
                for j in range(H):
                    h = ht[b, j]
                    dt[b, j] = (dt[b, j] + tmp[b, j]) * (one - h * h)
        else:
            for b in range(B):
                for j in range(H):
                    h = ht[b, j]
                    dt[b, j] = dt[b, j] * (one - h * h)
    _forward_input_grads(x, hs, dH, gWh, gbh, gWxh, gWxhT, gemm, one, zero)

    if update:
        b1, c1, b2, c2 = hyper[0], hyper[1], hyper[2], hyper[3]
        sf, ef, sy, ey = hyper[4], hyper[5], hyper[8], hyper[9]
        _adam(Wxh, gWxh, m[0], v[0], b1, c1, b2, c2, sf, ef)
        _adam(Wh, gWh, m[1], v[1], b1, c1, b2, c2, sf, ef)
        _adam(bh, gbh, m[2], v[2], b1, c1, b2, c2, sf, ef)
        _adam(Why, gWhy, m[3], v[3], b1, c1, b2, c2, sy, ey)
        _adam(by, gby, m[4], v[4], b1, c1, b2, c2, sy, ey)
    return nll / B


@njit(cache=True, error_model="numpy")
def fused_tp_step(x, y, params, grads, m, v, scratch, hyper, update, gemm):
    """One target-propagation training step (arguments as
    :func:`fused_bptt_step`). Returns the loss sum_t mean_b CE(p_t, y_t).

    After the call ``scratch[4]`` (D, [L,B,H]) holds the displacements D_t and
    ``scratch[6]`` (G) holds G(x_t, h_t) (or, with sigma > 0, the inverse
    applied to the noisy forward images). If sigma > 0, ``scratch[15]``
    (noise, [L,B,H]) must hold standard normal draws for this step.
    """
    Wxh, Wh, bh, Why, by, Vh, ch = params
    gWxh, gWh, gbh, gWhy, gby, gVh, gch = grads
    (hs, A, P, dH, D, OG, G, R, tmp, tmp2,
     WxhT, WhT, WhyT, VhT, gWxhT, noise) = scratch
    L, B = x.shape
    H = Wh.shape[0]
    alpha = hyper[10]
    sigma = hyper[11]
    one, zero = hyper[13], hyper[14]

    nll = _forward(x, y, Wxh, Wh, bh, Why, by, WxhT, WhT, WhyT, hs, A, P, tmp, gemm, one, zero)
    _output_grads(y, Why, hs, P, hyper[12], gWhy, gby, dH, gemm, one, zero)
    # dH now holds dz_t @ W_hy; the step displacement is e_t = -alpha * dH_t.

    # og_t = W_xh[:, x_t].T + c_h ; Gf_t = tanh(h_t @ V_h.T + og_t), batched
    _transpose_into(Vh, VhT)
    for t in range(L):
        for b in range(B):
            row = WxhT[x[t, b]]
            for j in range(H):
                OG[t, b, j] = row[j] + ch[j]
    Hall = hs[1:].reshape(L * B, H)
    G2 = G.reshape(L * B, H)
    _mm(gemm, Hall, VhT, G2, one, zero)
    _act_sum(G2, OG.reshape(L * B, H), G2)

    # displacements, linear merge through the inverse (a backward scan)
    mal = -alpha
    for b in range(B):
        for j in range(H):
            D[L - 1, b, j] = mal * dH[L - 1, b, j]
    for t in range(L - 1, 0, -1):
        ht = hs[t + 1]
        Dt = D[t]
        for b in range(B):
            for j in range(H):
                tmp2[b, j] = ht[b, j] + Dt[b, j]
        _mm(gemm, tmp2, VhT, tmp, one, zero)
        _act_sum(tmp, OG[t], tmp)
        Gt = G[t]
        Dn = D[t - 1]
        en = dH[t - 1]
        for b in range(B):
            for j in range(H):
                Dn[b, j] = mal * en[b, j] + tmp[b, j] - Gt[b, j]

    # local forward gradients: delta_t = -D_t * (1 - h_t^2) (into dH)
    for t in range(L):
        ht = hs[t + 1]
        for b in range(B):
            for j in range(H):
                h = ht[b, j]
                dH[t, b, j] = -D[t, b, j] * (one - h * h)
    _forward_input_grads(x, hs, dH, gWh, gbh, gWxh, gWxhT, gemm, one, zero)

    # inverse training (reconstruction of h_{t-1}); residual grads into R
    Hprev = hs[:-1].reshape(L * B, H)
    R2 = R.reshape(L * B, H)
    if sigma == 0:
        for t in range(L):
            hp = hs[t]
            for b in range(B):
                for j in range(H):
                    g = G[t, b, j]
                    R[t, b, j] = (g - hp[b, j]) * (one - g * g)
        _mm_tn(gemm, R2, Hall, gVh, one, zero)
    else:
        # hn = h_{t-1} + sigma*noise (into noise); fn = tanh(a_t + hn @ W_h.T)
        # (into A); Gn = tanh(fn @ V_h.T + og_t) (into G)
        N2 = noise.reshape(L * B, H)
        for r in range(L * B):
            for j in range(H):
                N2[r, j] = Hprev[r, j] + sigma * N2[r, j]
        A2 = A.reshape(L * B, H)
        _mm(gemm, N2, WhT, R2, one, zero)
        _act_sum(A2, R2, A2)
        _mm(gemm, A2, VhT, G2, one, zero)
        _act_sum(G2, OG.reshape(L * B, H), G2)
        for r in range(L * B):
            for j in range(H):
                g = G2[r, j]
                R2[r, j] = (g - N2[r, j]) * (one - g * g)
        _mm_tn(gemm, R2, A2, gVh, one, zero)
    _colsum_into(R2, gch)

    if update:
        b1, c1, b2, c2 = hyper[0], hyper[1], hyper[2], hyper[3]
        sf, ef, sg, eg, sy, ey = hyper[4], hyper[5], hyper[6], hyper[7], hyper[8], hyper[9]
        _adam(Wxh, gWxh, m[0], v[0], b1, c1, b2, c2, sf, ef)
        _adam(Wh, gWh, m[1], v[1], b1, c1, b2, c2, sf, ef)
        _adam(bh, gbh, m[2], v[2], b1, c1, b2, c2, sf, ef)
        _adam(Why, gWhy, m[3], v[3], b1, c1, b2, c2, sy, ey)
        _adam(by, gby, m[4], v[4], b1, c1, b2, c2, sy, ey)
        _adam(Vh, gVh, m[5], v[5], b1, c1, b2, c2, sg, eg)
        _adam(ch, gch, m[6], v[6], b1, c1, b2, c2, sg, eg)
    return nll / B


# ----------------------------------------------------------------------------
# Python driver: owns parameters, Adam state and scratch buffers
# ----------------------------------------------------------------------------
PARAM_NAMES = ("W_xh", "W_h", "b_h", "W_hy", "b_y", "V_h", "c_h")


def _orthogonal(rng, n, dtype):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    q = q * np.sign(np.diag(r))
    return np.ascontiguousarray(q, dtype=dtype)


class FusedSRN:
    """The paper's SRN with hand-fused BPTT and TP training steps.

    ``FusedSRN(n_in, H, n_out, B, L, dtype=np.float32, seed=0, alpha=0.1,
    lr_f=1e-3, lr_g=1e-3, lr_y=1e-3, lr=1e-3, sigma=0.0, blas=None)``

    * ``bptt_step(x, y)`` / ``tp_step(x, y, noise=None)``: one training step
      on int arrays x, y of shape [L,B] (time-major); returns the loss
      ``sum_t mean_b CE(p_t, y_t)`` of the batch before the update (divide by
      L for the mean per-step loss).
    * ``bptt_grads(x, y)`` / ``tp_grads(x, y, noise=None)``: the same
      computation without the parameter update; return ``(loss, grads)``
      with ``grads`` a dict by parameter name (copies); ``tp_grads`` adds
      ``grads["D"]``, the displacements [L,B,H].
    * ``params``: dict of the live parameter arrays (paper orientation).

    BPTT uses Adam with ``lr`` on all five forward/output parameters; TP uses
    Adam with ``lr_f`` (W_xh, W_h, b_h), ``lr_g`` (V_h, c_h) and ``lr_y``
    (W_hy, b_y). B and L given here only pre-size the scratch buffers; other
    shapes reallocate on first use. With ``sigma > 0`` the inverse is trained
    on noisy states; the noise is drawn from this object's generator unless
    passed in (``noise`` [L,B,H] standard normal).

    ``blas``: "cblas" -- every matrix product through NumPy's own OpenBLAS
    (``tpgraph.kernels.blas``, as the engine's scans); "numba" -- through
    ``np.dot`` inside Numba (SciPy's OpenBLAS). None (default): "cblas" where
    ``gemm_for(dtype)`` finds that BLAS, else "numba". Asking for "cblas"
    where it is not found raises ValueError. The chosen path is ``self.blas``.
    """

    B1, B2, EPS = 0.9, 0.999, 1e-8

    def __init__(self, n_in, H, n_out, B, L, dtype=np.float32, seed=0, alpha=0.1,
                 lr_f=1e-3, lr_g=1e-3, lr_y=1e-3, lr=1e-3, sigma=0.0, blas=None):
        self.n_in, self.H, self.n_out = n_in, H, n_out
        self.dtype = np.dtype(dtype)
        gemm = gemm_for(self.dtype)
        if blas is None:
            blas = "cblas" if gemm is not None else "numba"
        if blas not in ("cblas", "numba"):
            raise ValueError(f"blas must be 'cblas', 'numba' or None, got {blas!r}")
        if blas == "cblas" and gemm is None:
            raise ValueError("blas='cblas': NumPy's OpenBLAS cblas_?gemm was not found "
                             "(or TPGRAPH_BLAS=numba is set); use blas='numba'")
        self.blas = blas
        self._gemm = gemm if blas == "cblas" else None
        self.alpha, self.sigma = float(alpha), float(sigma)
        self.lr_f, self.lr_g, self.lr_y, self.lr = lr_f, lr_g, lr_y, lr
        self.rng = np.random.default_rng(seed)
        dt = self.dtype
        rng = self.rng
        W_h = _orthogonal(rng, H, dt)
        V_h = _orthogonal(rng, H, dt)
        W_xh = (0.1 * rng.standard_normal((H, n_in))).astype(dt)
        W_hy = (0.1 * rng.standard_normal((n_out, H))).astype(dt)
        self._p = (W_xh, W_h, np.zeros(H, dt), W_hy, np.zeros(n_out, dt), V_h,
                   np.zeros(H, dt))
        self._g = tuple(np.zeros_like(a) for a in self._p)
        self._m = tuple(np.zeros_like(a) for a in self._p)
        self._v = tuple(np.zeros_like(a) for a in self._p)
        self._t = [0, 0, 0]  # Adam step counts: forward, inverse, output group
        self._hyper = np.zeros(15, dt)
        self._shape = None
        self._alloc(L, B)

    # -- state ---------------------------------------------------------------
    @property
    def params(self):
        return dict(zip(PARAM_NAMES, self._p))

    def _alloc(self, L, B):
        dt, H, n_in, n_out = self.dtype, self.H, self.n_in, self.n_out
        e = lambda *s: np.zeros(s, dt)  # noqa: E731
        noise = e(L, B, H) if self.sigma > 0 else e(1, 1, 1)
        self._scratch = (
            e(L + 1, B, H),  # 0 hs: h_0..h_L
            e(L, B, H),      # 1 A: input pre-activations (noisy forward images)
            e(L, B, n_out),  # 2 P: probabilities, then dz
            e(L, B, H),      # 3 dH: dz @ W_hy, then da_t / delta_t
            e(L, B, H),      # 4 D: TP displacements
            e(L, B, H),      # 5 OG: W_xh[:, x_t].T + c_h
            e(L, B, H),      # 6 G: inverse images
            e(L, B, H),      # 7 R: inverse residual gradients
            e(B, H),         # 8 tmp
            e(B, H),         # 9 tmp2
            e(n_in, H),      # 10 W_xh.T
            e(H, H),         # 11 W_h.T
            e(H, n_out),     # 12 W_hy.T
            e(H, H),         # 13 V_h.T
            e(n_in, H),      # 14 dW_xh.T
            noise,           # 15 noise (sigma > 0)
        )
        self._shape = (L, B)

    def _prepare(self, x, y, groups, update):
        x = np.ascontiguousarray(x, dtype=np.int64)
        y = np.ascontiguousarray(y, dtype=np.int64)
        if x.shape != self._shape:
            self._alloc(*x.shape)
        h = self._hyper
        b1, b2, eps = self.B1, self.B2, self.EPS
        h[0], h[1], h[2], h[3] = b1, 1 - b1, b2, 1 - b2
        lrs = (self.lr, self.lr, self.lr) if groups == "bptt" else (self.lr_f, self.lr_g, self.lr_y)
        active = (0, 2) if groups == "bptt" else (0, 1, 2)
        for k in range(3):
            t = self._t[k] + (1 if (update and k in active) else 0)
            if update and k in active:
                self._t[k] = t
            tt = max(t, 1)
            c2 = np.sqrt(1 - b2 ** tt)
            h[4 + 2 * k] = lrs[k] * c2 / (1 - b1 ** tt)
            h[5 + 2 * k] = eps * c2
        h[10], h[11], h[12], h[13], h[14] = self.alpha, self.sigma, 1.0 / x.shape[1], 1.0, 0.0
        return x, y

    def _fill_noise(self, noise):
        if self.sigma > 0:
            buf = self._scratch[15]
            if noise is None:
                self.rng.standard_normal(out=buf, dtype=buf.dtype.type)
            else:
                buf[...] = noise

    # -- steps -----------------------------------------------------------------
    def bptt_step(self, x, y):
        x, y = self._prepare(x, y, "bptt", True)
        return fused_bptt_step(x, y, self._p, self._g, self._m, self._v,
                               self._scratch, self._hyper, True, self._gemm)

    def tp_step(self, x, y, noise=None):
        x, y = self._prepare(x, y, "tp", True)
        self._fill_noise(noise)
        return fused_tp_step(x, y, self._p, self._g, self._m, self._v,
                             self._scratch, self._hyper, True, self._gemm)

    def bptt_grads(self, x, y):
        x, y = self._prepare(x, y, "bptt", False)
        loss = fused_bptt_step(x, y, self._p, self._g, self._m, self._v,
                               self._scratch, self._hyper, False, self._gemm)
        return loss, {k: g.copy() for k, g in zip(PARAM_NAMES[:5], self._g[:5])}

    def tp_grads(self, x, y, noise=None):
        x, y = self._prepare(x, y, "tp", False)
        self._fill_noise(noise)
        loss = fused_tp_step(x, y, self._p, self._g, self._m, self._v,
                             self._scratch, self._hyper, False, self._gemm)
        grads = {k: g.copy() for k, g in zip(PARAM_NAMES, self._g)}
        grads["D"] = self._scratch[4].copy()
        return loss, grads


def flops_bptt(L, B, H, n_in, n_out):
    """Matrix-product FLOPs (2 per multiply-add) of one BPTT step: forward
    recurrence, output layer, dW_hy, dz @ W_hy, backward recurrence, dW_h.
    (Input gathers/scatters of the one-hot inputs are not products.)"""
    rec = 2 * (L - 1) * B * H * H          # h_{t-1} @ W_h.T
    out = 2 * L * B * H * n_out            # h @ W_hy.T
    return (rec + out                      # forward
            + out + out                    # dW_hy, dz @ W_hy
            + rec                          # backward scan da @ W_h
            + 2 * L * B * H * H)           # dW_h


def flops_tp(L, B, H, n_in, n_out, sigma=0.0):
    """Matrix-product FLOPs of one TP step: forward, output layer grads and
    e_t, Gf over all rows, the displacement scan, dW_h, inverse training
    (dV_h; with sigma > 0 also the noisy forward and inverse images)."""
    rec = 2 * (L - 1) * B * H * H
    out = 2 * L * B * H * n_out
    full = 2 * L * B * H * H
    f = rec + out + out + out              # forward, dW_hy, e_t
    f += full                              # Gf_t over all L*B rows
    f += rec                               # displacement scan
    f += full                              # dW_h
    f += full                              # dV_h
    if sigma > 0:
        f += 2 * full                      # noisy forward images and inverse
    return f
