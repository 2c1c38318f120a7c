"""Correctness of the hand-fused reference steps in ``benchmarks/fused.py``.

(a) fused BPTT gradients == central finite differences of the loss (float64);
(b) fused TP displacements, gradients and Adam updates == a plain-NumPy
    transcription of the TP equations (loop over t), for sigma = 0 and > 0;
(c) the float32 fast tanh is within 5e-7 of np.tanh on [-20, 20];
(d) the two BLAS paths of the steps (blas="cblas": NumPy's OpenBLAS through
    tpgraph.kernels.blas.mm; blas="numba": np.dot inside Numba) give the same
    losses, gradients, displacements and Adam updates.

(a) and (b) run the default path (cblas where NumPy's OpenBLAS is found), so
with (d) both paths are checked against the references.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
fused = pytest.importorskip("fused")

B, L, H, N_IN, N_OUT = 3, 5, 6, 4, 4


def _data(seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, N_IN, (L, B)), rng.integers(0, N_OUT, (L, B))


def _model(**kw):
    m = fused.FusedSRN(N_IN, H, N_OUT, B, L, np.float64, seed=3, **kw)
    # non-zero biases and inverse bias so that every term is exercised
    rng = np.random.default_rng(7)
    for name in ("b_h", "b_y", "c_h"):
        m.params[name][:] = 0.1 * rng.standard_normal(m.params[name].shape)
    return m


# -- plain NumPy reference ------------------------------------------------------
def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ref_forward(p, x, y):
    hs = [np.zeros((B, H))]
    ps = []
    loss = 0.0
    for t in range(L):
        a = p["W_xh"][:, x[t]].T + p["b_h"]
        hs.append(np.tanh(a + hs[-1] @ p["W_h"].T))
        pt = _softmax(hs[-1] @ p["W_hy"].T + p["b_y"])
        ps.append(pt)
        loss += -np.mean(np.log(pt[np.arange(B), y[t]]))
    return hs, ps, loss


def ref_tp(p, x, y, alpha, sigma=0.0, noise=None):
    """Displacements and gradients of one TP step, transcribed literally."""
    hs, ps, loss = ref_forward(p, x, y)
    g = {k: np.zeros_like(v) for k, v in p.items()}
    e = [None] * (L + 1)
    for t in range(1, L + 1):
        dz = ps[t - 1].copy()
        dz[np.arange(B), y[t - 1]] -= 1
        dz /= B
        g["W_hy"] += dz.T @ hs[t]
        g["b_y"] += dz.sum(0)
        e[t] = -alpha * dz @ p["W_hy"]
    og = [None] + [p["W_xh"][:, x[t - 1]].T + p["c_h"] for t in range(1, L + 1)]
    Gf = [None] + [np.tanh(hs[t] @ p["V_h"].T + og[t]) for t in range(1, L + 1)]
    D = [None] * (L + 1)
    D[L] = e[L]
    for t in range(L, 1, -1):
        D[t - 1] = e[t - 1] + np.tanh((hs[t] + D[t]) @ p["V_h"].T + og[t]) - Gf[t]
    for t in range(1, L + 1):
        delta = -D[t] * (1 - hs[t] ** 2)
        g["W_h"] += delta.T @ hs[t - 1]
        g["b_h"] += delta.sum(0)
        for b in range(B):
            g["W_xh"][:, x[t - 1, b]] += delta[b]
        if sigma == 0:
            r = Gf[t] - hs[t - 1]
            dg = r * (1 - Gf[t] ** 2)
            g["V_h"] += dg.T @ hs[t]
        else:
            hn = hs[t - 1] + sigma * noise[t - 1]
            a = p["W_xh"][:, x[t - 1]].T + p["b_h"]
            fn = np.tanh(a + hn @ p["W_h"].T)
            Gn = np.tanh(fn @ p["V_h"].T + og[t])
            dg = (Gn - hn) * (1 - Gn ** 2)
            g["V_h"] += dg.T @ fn
        g["c_h"] += dg.sum(0)
    return loss, g, np.stack(D[1:])


def ref_adam(p, g, m, v, t, lr):
    m[:] = 0.9 * m + 0.1 * g
    v[:] = 0.999 * v + 0.001 * g * g
    mh = m / (1 - 0.9 ** t)
    vh = v / (1 - 0.999 ** t)
    p -= lr * mh / (np.sqrt(vh) + 1e-8)


# -- (a) BPTT vs finite differences -------------------------------------------------
def test_bptt_gradients_match_finite_differences():
    m = _model()
    x, y = _data()
    loss, grads = m.bptt_grads(x, y)
    _, _, ref_loss = ref_forward(m.params, x, y)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    eps = 1e-6
    for name in ("W_xh", "W_h", "b_h", "W_hy", "b_y"):
        w = m.params[name]
        fd = np.zeros_like(w)
        for i in np.ndindex(w.shape):
            old = w[i]
            w[i] = old + eps
            lp, _ = m.bptt_grads(x, y)
            w[i] = old - eps
            lm, _ = m.bptt_grads(x, y)
            w[i] = old
            fd[i] = (lp - lm) / (2 * eps)
        rel = np.linalg.norm(grads[name] - fd) / np.linalg.norm(fd)
        assert rel < 1e-5, (name, rel)
        assert np.abs(grads[name] - fd).max() < 1e-5 * np.abs(fd).max(), name


def test_bptt_step_applies_adam():
    m = _model(lr=0.01)
    x, y = _data()
    p0 = {k: v.copy() for k, v in m.params.items()}
    mom = {k: np.zeros_like(v) for k, v in p0.items()}
    vel = {k: np.zeros_like(v) for k, v in p0.items()}
    for t in (1, 2):
        _, g = m.bptt_grads(x, y)
        m.bptt_step(x, y)
        for k in g:
            ref_adam(p0[k], g[k], mom[k], vel[k], t, 0.01)
    for k in ("W_xh", "W_h", "b_h", "W_hy", "b_y", "V_h", "c_h"):
        np.testing.assert_allclose(m.params[k], p0[k], rtol=1e-10, atol=1e-13)


# -- (b) TP vs plain NumPy ----------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.0, 0.3])
def test_tp_matches_plain_numpy(sigma):
    m = _model(alpha=0.7, sigma=sigma)
    x, y = _data(2)
    noise = np.random.default_rng(5).standard_normal((L, B, H)) if sigma else None
    loss, grads = m.tp_grads(x, y, noise=noise)
    ref_loss, ref_g, ref_D = ref_tp(m.params, x, y, 0.7, sigma, noise)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(grads["D"], ref_D, rtol=1e-10, atol=1e-13)
    assert np.abs(ref_D).max() > 1e-3  # non-trivial displacements
    for k, g in ref_g.items():
        assert np.abs(g).max() > 0, k
        np.testing.assert_allclose(grads[k], g, rtol=1e-10, atol=1e-13, err_msg=k)


def test_tp_step_adam_groups():
    lrs = dict(lr_f=0.01, lr_g=0.02, lr_y=0.03)
    m = _model(alpha=0.5, **lrs)
    x, y = _data(3)
    p = {k: v.copy() for k, v in m.params.items()}
    mom = {k: np.zeros_like(v) for k, v in p.items()}
    vel = {k: np.zeros_like(v) for k, v in p.items()}
    group_lr = {"W_xh": 0.01, "W_h": 0.01, "b_h": 0.01, "V_h": 0.02, "c_h": 0.02,
                "W_hy": 0.03, "b_y": 0.03}
    for t in (1, 2, 3):
        _, g, _ = ref_tp(p, x, y, 0.5)  # all grads before any update
        loss = m.tp_step(x, y)
        assert np.isfinite(loss)
        for k in p:
            ref_adam(p[k], g[k], mom[k], vel[k], t, group_lr[k])
    for k in p:
        np.testing.assert_allclose(m.params[k], p[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_float32_tp_tracks_float64():
    # (float32 BPTT is exercised by benchmarks/bench.py; compiling it here too
    # would double this file's cold-cache time)
    x, y = _data(4)
    m64 = fused.FusedSRN(N_IN, H, N_OUT, B, L, np.float64, seed=3)
    m32 = fused.FusedSRN(N_IN, H, N_OUT, B, L, np.float32, seed=3)
    for step in ("tp_step", "tp_step", "tp_step"):
        l64 = getattr(m64, step)(x, y)
        l32 = getattr(m32, step)(x, y)
        assert l32 == pytest.approx(l64, rel=1e-5)
    for k, v in m64.params.items():
        assert m32.params[k].dtype == np.float32
        np.testing.assert_allclose(m32.params[k], v, atol=1e-4, err_msg=k)


# -- (c) fast tanh ---------------------------------------------------------------------
def test_fast_tanh_float32_accuracy():
    xs = np.linspace(-20, 20, 400_001).astype(np.float32)
    xs = np.concatenate([xs, np.float32([0.0, -0.0, 1e-30, -1e-30, 8.99, 9.0, 9.01, -9.01])])
    out = np.empty_like(xs)
    fused.act_array(xs, out)
    ref = np.tanh(xs.astype(np.float64))
    assert np.abs(out.astype(np.float64) - ref).max() < 5e-7
    assert np.abs(out).max() <= 1.0
    np.testing.assert_allclose(fused.act(xs), out, rtol=0, atol=1e-7)  # Python twin
    # float64 path is exact tanh (libm; may differ from NumPy's SIMD tanh by an ulp)
    x64 = np.linspace(-20, 20, 10_001)
    o64 = np.empty_like(x64)
    fused.act_array(x64, o64)
    np.testing.assert_allclose(o64, np.tanh(x64), rtol=0, atol=4e-16)


# -- (d) cblas path == np.dot path ---------------------------------------------------
needs_cblas = pytest.mark.skipif(fused.gemm_for(np.float64) is None,
                                 reason="NumPy's OpenBLAS cblas_dgemm not found (or TPGRAPH_BLAS=numba)")


def test_blas_option():
    m = fused.FusedSRN(N_IN, H, N_OUT, B, L, np.float64)
    assert m.blas == ("cblas" if fused.gemm_for(np.float64) is not None else "numba")
    assert fused.FusedSRN(N_IN, H, N_OUT, B, L, np.float64, blas="numba").blas == "numba"
    with pytest.raises(ValueError, match="blas"):
        fused.FusedSRN(N_IN, H, N_OUT, B, L, np.float64, blas="mkl")


@needs_cblas
def test_cblas_path_equals_np_dot_path():
    """float64 (the dtype the other tests compile, so only the np.dot variants
    are compiled in addition): TP with sigma = 0 and > 0 (every product of the
    TP step, the noisy branch included) and BPTT, gradients then three
    training steps."""
    x, y = _data(5)
    noise = np.random.default_rng(6).standard_normal((L, B, H))
    tol = dict(rtol=1e-10, atol=1e-13)
    for sigma in (0.0, 0.3):
        cb, nd = (_model(alpha=0.7, sigma=sigma, lr_f=0.01, lr_g=0.02, lr_y=0.03, blas=b)
                  for b in ("cblas", "numba"))
        assert (cb.blas, nd.blas) == ("cblas", "numba")
        lc, gc = cb.tp_grads(x, y, noise=noise)
        ln, gn = nd.tp_grads(x, y, noise=noise)
        assert lc == pytest.approx(ln, rel=1e-12)
        for k in gn:
            assert np.abs(gn[k]).max() > 0, k
            np.testing.assert_allclose(gc[k], gn[k], **tol, err_msg=f"sigma={sigma} {k}")
        for _ in range(3):
            assert cb.tp_step(x, y, noise=noise) == pytest.approx(nd.tp_step(x, y, noise=noise), rel=1e-12)
        for k, v in nd.params.items():
            np.testing.assert_allclose(cb.params[k], v, **tol, err_msg=f"sigma={sigma} {k}")
    cb, nd = (_model(lr=0.01, blas=b) for b in ("cblas", "numba"))
    lc, gc = cb.bptt_grads(x, y)
    ln, gn = nd.bptt_grads(x, y)
    assert lc == pytest.approx(ln, rel=1e-12)
    for k in gn:
        np.testing.assert_allclose(gc[k], gn[k], **tol, err_msg=k)
    for _ in range(3):
        assert cb.bptt_step(x, y) == pytest.approx(nd.bptt_step(x, y), rel=1e-12)
    for k, v in nd.params.items():
        np.testing.assert_allclose(cb.params[k], v, **tol, err_msg=k)
