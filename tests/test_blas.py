"""The scan kernels that multiply through NumPy's OpenBLAS equal their np.dot twins."""

import numpy as np
import pytest

from tpgraph.kernels import dense as kd
from tpgraph.kernels.activations import TANH, TANH_FAST
from tpgraph.kernels.blas import GEMM, gemm_for, mm

pytestmark = pytest.mark.skipif(not GEMM, reason="NumPy's OpenBLAS not found on this platform")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mm_matches_numpy(dtype):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 5)).astype(dtype)
    b = rng.normal(size=(5, 3)).astype(dtype)
    out = np.zeros((7, 3), dtype)
    mm(gemm_for(dtype), a, b, out, dtype(1), dtype(0))
    np.testing.assert_allclose(out, a @ b, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scans_match_np_dot_versions(dtype):
    rng = np.random.default_rng(1)
    m, B, n = 6, 4, 5
    code = TANH_FAST if dtype == np.float32 else TANH
    g, one, zero = gemm_for(dtype), dtype(1), dtype(0)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    a = rng.normal(size=(m, B, n)).astype(dtype)
    bias = rng.normal(size=n).astype(dtype)
    wt = rng.normal(size=(n, n)).astype(dtype) * 0.5
    h1, h2 = np.zeros((m + 1, B, n), dtype), np.zeros((m + 1, B, n), dtype)
    h1[0] = h2[0] = rng.normal(size=(B, n))
    kd.scan_forward(h1, a, bias, wt, code, 0.01, np.zeros((B, n), dtype))
    kd.scan_forward_cblas(g, one, zero, h2, a, bias, wt, code, 0.01, np.zeros((B, n), dtype))
    np.testing.assert_allclose(h2, h1, **tol)
    inv = np.ones(m, dtype)
    d0 = rng.normal(size=(m, B, n)).astype(dtype)
    out = []
    for f in (kd.scan_gradient, kd.scan_gradient_cblas):
        d, p, delta = d0.copy(), np.zeros((m, B, n), dtype), np.zeros((m, B, n), dtype)
        args = (d, h1, wt.T.copy(), code, 0.01, inv, m - 1, 0, p, delta)
        f(*args) if f is kd.scan_gradient else f(g, one, zero, *args)
        out.append((d, p, delta))
    for x, y in zip(*out):
        np.testing.assert_allclose(y, x, **tol)
    og = rng.normal(size=(m, B, n)).astype(dtype)
    gf = rng.normal(size=(m, B, n)).astype(dtype)
    out = []
    for f in (kd.scan_inverse, kd.scan_inverse_cblas):
        d, p = d0.copy(), np.zeros((m, B, n), dtype)
        args = (d, h1, wt, og, gf, code, 0.01, code, 0.01, False, inv, m - 1, 1, True, p, np.zeros((B, n), dtype))
        f(*args) if f is kd.scan_inverse else f(g, one, zero, *args)
        out.append((d, p))
    for x, y in zip(*out):
        np.testing.assert_allclose(y, x, **tol)
