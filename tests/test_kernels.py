"""Every Numba kernel of :mod:`tpgraph.kernels` against a plain-NumPy reference.

Activations (value, derivative through the output, the float32 fast tanh),
the dense kernels (one-hot gathers and scatters, the scans through time, the
inverse's proposal and residual, local losses, noise) and the loss kernels
(softmax cross-entropy, squared error, argmax), in float32 and float64. The
references are written here from the kernels' documented contracts, not from
their code.
"""

import functools

import numpy as np
import pytest

from tpgraph.kernels import activations as ka
from tpgraph.kernels import dense as kd
from tpgraph.kernels import losses as kl
from tpgraph.inverses import adjoint_features

DTYPES = [np.float32, np.float64]
SLOPE = 0.07  # a leaky slope unlike the default, so that it must be passed through


def tol(dtype):
    return dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------- references
def act_ref(z, name, slope=SLOPE):
    z = np.asarray(z)
    if name == "identity":
        return z.copy()
    if name in ("tanh", "tanh_fast"):
        return np.tanh(z)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "relu":
        return np.where(z > 0, z, 0.0).astype(z.dtype)
    if name == "leaky_relu":
        return np.where(z > 0, z, slope * z).astype(z.dtype)
    raise AssertionError(name)


def deriv_ref_from_z(z, name, slope=SLOPE):
    """The derivative at the pre-activation ``z`` (the kernels take it through the output)."""
    if name in ("tanh", "tanh_fast"):
        return 1.0 - np.tanh(z) ** 2
    if name == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-z))
        return s * (1 - s)
    if name == "relu":
        return (z > 0).astype(z.dtype)
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, slope).astype(z.dtype)
    return np.ones_like(z)


CODES = {name: code for name, code in ka.ACTIVATIONS.items()}
CODES["tanh_fast"] = ka.TANH_FAST
#: The adjoint inverse's features phi (tpgraph.inverses.adjoint_features), per forward activation.
FEATURES = {name: functools.partial(adjoint_features, act=name, slope=SLOPE) for name in ka.ACTIVATIONS}
ALL_ACTS = sorted(CODES)
#: (dtype, activation) pairs; the fast tanh is the float32 path only
ACT_CASES = [pytest.param(d, n, id=f"{n}-{np.dtype(d).name}") for d in DTYPES for n in ALL_ACTS
             if not (n == "tanh_fast" and d == np.float64)]


def test_activation_table_is_complete():
    """The user-facing names are exactly the five activations the issue asks for, with distinct codes."""
    assert set(ka.ACTIVATIONS) == {"identity", "tanh", "sigmoid", "relu", "leaky_relu"}
    codes = list(ka.ACTIVATIONS.values()) + [ka.TANH_FAST]
    assert len(set(codes)) == len(codes)


def pre_activations(dtype, rows=7, cols=5, seed=0):
    """Random pre-activations kept away from relu's kink (finite differences straddle no kink)."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(-3, 3, (rows, cols))
    z = np.where(np.abs(z) < 0.05, 0.5, z)
    return z.astype(dtype)


def run_bias_activate(z, bias, name):
    out = np.empty_like(z)
    ka.bias_activate(z, bias, CODES[name], SLOPE, out)
    return out


# ---------------------------------------------------------------- activations
@pytest.mark.parametrize("dtype,name", ACT_CASES)
def test_bias_activate_matches_numpy(dtype, name):
    z = pre_activations(dtype)
    bias = np.random.default_rng(1).normal(size=z.shape[1]).astype(dtype)
    out = run_bias_activate(z, bias, name)
    assert out.dtype == dtype
    want = act_ref(z + bias, name)
    np.testing.assert_allclose(out, want, **(tol(dtype) if name != "tanh_fast" else dict(atol=1e-6)))


@pytest.mark.parametrize("dtype,name", ACT_CASES)
def test_bias_activate_in_place(dtype, name):
    """``out`` may be ``z`` (the engine activates its buffers in place)."""
    z = pre_activations(dtype, seed=3)
    bias = np.linspace(-1, 1, z.shape[1]).astype(dtype)
    want = run_bias_activate(z.copy(), bias, name)
    ka.bias_activate(z, bias, CODES[name], SLOPE, z)
    np.testing.assert_array_equal(z, want)


@pytest.mark.parametrize("dtype,name", ACT_CASES)
def test_add_bias_activate_matches_numpy(dtype, name):
    rng = np.random.default_rng(2)
    z = pre_activations(dtype, seed=4) / 2
    a = (rng.uniform(-1.5, 1.5, z.shape)).astype(dtype)
    bias = rng.normal(size=z.shape[1]).astype(dtype)
    # keep z + a + bias away from relu's kink
    s = z + a + bias
    a = np.where(np.abs(s) < 0.05, a + dtype(0.3), a)
    out = np.empty_like(z)
    ka.add_bias_activate(z, a, bias, CODES[name], SLOPE, out)
    np.testing.assert_allclose(out, act_ref(z + a + bias, name),
                               **(tol(dtype) if name != "tanh_fast" else dict(atol=1e-6)))
    # aliased output
    zz = z.copy()
    ka.add_bias_activate(zz, a, bias, CODES[name], SLOPE, zz)
    np.testing.assert_array_equal(zz, out)


@pytest.mark.parametrize("dtype,name", ACT_CASES)
def test_act_block_matches_numpy(dtype, name):
    """``act_block`` (the branch-outside-the-loop activation used by the scans), when present."""
    act_block = getattr(ka, "act_block", None)
    if act_block is None:
        pytest.skip("no act_block kernel in this version")
    rng = np.random.default_rng(5)
    z = pre_activations(dtype, seed=6) / 2
    a = rng.uniform(-1, 1, z.shape).astype(dtype)
    bias = rng.normal(size=z.shape[1]).astype(dtype)
    a = np.where(np.abs(z + a + bias) < 0.05, a + dtype(0.3), a)
    out = np.empty_like(z)
    act_block(z, a, bias, CODES[name], SLOPE, out)
    np.testing.assert_allclose(out, act_ref(z + a + bias, name),
                               **(tol(dtype) if name != "tanh_fast" else dict(atol=1e-6)))


@pytest.mark.parametrize("dtype,name", [(d, n) for d in DTYPES for n in ALL_ACTS])
def test_mul_deriv_matches_derivative(dtype, name):
    """``mul_deriv`` takes the activation's *output*; it must give ``d * act'(z)``."""
    z = pre_activations(dtype, seed=7)
    zero = np.zeros(z.shape[1], dtype=dtype)
    h = run_bias_activate(z, zero, name)
    d = np.random.default_rng(8).normal(size=z.shape).astype(dtype)
    out = np.empty_like(d)
    ka.mul_deriv(d, h, CODES[name], SLOPE, out)
    want = d.astype(np.float64) * deriv_ref_from_z(z.astype(np.float64), name)
    loose = dtype == np.float32 or name == "tanh_fast"  # the fast tanh is float32-accurate only
    np.testing.assert_allclose(out, want, rtol=1e-5 if loose else 1e-12, atol=2e-6 if loose else 1e-14)


@pytest.mark.parametrize("name", ALL_ACTS)
def test_derivative_matches_finite_differences_of_the_activation(name):
    """The derivative the kernels use (through ``h``) against central differences of the kernel's own activation."""
    dtype = np.float64
    z = pre_activations(dtype, seed=9)
    zero = np.zeros(z.shape[1])
    eps = 1e-6
    up = run_bias_activate(z + eps, zero, name)
    down = run_bias_activate(z - eps, zero, name)
    fd = (up - down) / (2 * eps)
    h = run_bias_activate(z, zero, name)
    out = np.empty_like(z)
    ka.mul_deriv(np.ones_like(z), h, CODES[name], SLOPE, out)
    # the fast tanh's derivative is taken as 1 - h^2, exact only up to the approximation error
    atol = 1e-5 if name == "tanh_fast" else 1e-8
    np.testing.assert_allclose(out, fd, rtol=1e-6, atol=atol)


@pytest.mark.parametrize("name", ALL_ACTS)
def test_scalar_activation_and_derivative(name):
    """``act_scalar`` and ``deriv_scalar`` (the scalar building blocks) agree with the references."""
    for z in (-2.5, -0.3, 0.4, 1.7):
        h = ka.act_scalar(z, CODES[name], SLOPE)
        assert h == pytest.approx(float(act_ref(np.float64(z), name)), abs=1e-7 if name == "tanh_fast" else 1e-15)
        d = ka.deriv_scalar(h, CODES[name], SLOPE)
        assert d == pytest.approx(float(deriv_ref_from_z(np.float64(z), name)), abs=2e-7 if name == "tanh_fast" else 1e-14)


def test_fast_tanh_float32_accuracy_over_range():
    x = np.linspace(-20, 20, 400_001, dtype=np.float32)
    out = np.empty((1, x.size), dtype=np.float32)
    ka.bias_activate(x[None, :], np.zeros(x.size, np.float32), ka.TANH_FAST, 0.0, out)
    err = np.abs(out[0].astype(np.float64) - np.tanh(x).astype(np.float64))
    assert err.max() < 5e-7, f"max error {err.max():.3g} at x={x[err.argmax()]}"
    # and against the exact value, not just float32 np.tanh
    err_exact = np.abs(out[0].astype(np.float64) - np.tanh(x.astype(np.float64)))
    assert err_exact.max() < 5e-7
    assert np.all(np.abs(out) <= 1.0)


def test_fast_tanh_is_odd_and_monotone_up_to_its_error():
    x = np.linspace(0, 20, 100_001, dtype=np.float32)
    pos = np.empty((1, x.size), np.float32)
    neg = np.empty((1, x.size), np.float32)
    zero = np.zeros(x.size, np.float32)
    ka.bias_activate(x[None], zero, ka.TANH_FAST, 0.0, pos)
    ka.bias_activate(-x[None], zero, ka.TANH_FAST, 0.0, neg)
    np.testing.assert_array_equal(neg, -pos)
    assert pos[0, 0] == 0.0
    # float32 rounding of the rational makes it wiggle by a few ulps near 1 (within the 5e-7 budget)
    assert np.diff(pos[0].astype(np.float64)).min() > -1e-6


def test_fast_tanh_scalar_kernel():
    for x in np.linspace(-12, 12, 97, dtype=np.float32):
        assert abs(float(ka.fast_tanh(x)) - np.tanh(float(x))) < 5e-7
        assert ka.fast_tanh(-x) == -ka.fast_tanh(x)


# ---------------------------------------------------------------- gathers and scatters
@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_rows_add_with_duplicate_indices(dtype):
    rng = np.random.default_rng(10)
    table = rng.normal(size=(4, 6)).astype(dtype)
    idx = np.array([3, 0, 3, 3, 1, 0, 2], dtype=np.int64)
    z = rng.normal(size=(idx.size, 6)).astype(dtype)
    want = z + table[idx]
    kd.gather_rows_add(z, table, idx, True)
    np.testing.assert_allclose(z, want, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_rows_without_accumulate_overwrites(dtype):
    rng = np.random.default_rng(11)
    table = rng.normal(size=(5, 3)).astype(dtype)
    idx = np.array([4, 4, 0, 2], dtype=np.int64)
    z = np.full((idx.size, 3), 123.0, dtype=dtype)  # garbage that must be overwritten
    kd.gather_rows_add(z, table, idx, False)
    np.testing.assert_allclose(z, table[idx], **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_scatter_cols_add_accumulates_duplicates(dtype):
    """The gradient of ``W [n, n_in]`` for one-hot inputs: ``grad[:, idx[r]] += delta[r]``."""
    rng = np.random.default_rng(12)
    idx = np.array([1, 1, 1, 0, 4, 1, 4], dtype=np.int64)
    delta = rng.normal(size=(idx.size, 3)).astype(dtype)
    grad = rng.normal(size=(3, 5)).astype(dtype)
    want = grad.astype(np.float64).copy()
    onehot = np.eye(5)[idx]
    want += delta.astype(np.float64).T @ onehot  # the dense product the scatter replaces
    kd.scatter_cols_add(grad, idx, delta)
    np.testing.assert_allclose(grad, want, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_scatter_rows_add_accumulates_duplicates(dtype):
    rng = np.random.default_rng(13)
    dst = rng.normal(size=(3, 2, 4)).astype(dtype)
    src = rng.normal(size=(5, 2, 4)).astype(dtype)
    idx = np.array([0, 2, 0, 0, 1], dtype=np.int64)
    want = dst.copy()
    np.add.at(want, idx, src)
    kd.scatter_rows_add(dst, idx, src)
    np.testing.assert_allclose(dst, want, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_rows_with_duplicates(dtype):
    rng = np.random.default_rng(14)
    src = rng.normal(size=(3, 2, 4)).astype(dtype)
    idx = np.array([2, 2, 0, 1, 2], dtype=np.int64)
    dst = np.zeros((idx.size, 2, 4), dtype=dtype)
    kd.gather_rows(dst, src, idx)
    np.testing.assert_array_equal(dst, src[idx])


# ---------------------------------------------------------------- scans through time
def chain_case(dtype, m=5, B=3, n=4, seed=20):
    rng = np.random.default_rng(seed)
    hext = np.zeros((m + 1, B, n), dtype=dtype)
    hext[0] = rng.uniform(-1, 1, (B, n))
    a = rng.normal(size=(m, B, n)).astype(dtype)
    bias = rng.normal(size=n).astype(dtype) * 0.3
    w = (rng.normal(size=(n, n)) * 0.6).astype(dtype)  # recurrent W [out, in]
    return rng, hext, a, bias, w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["tanh", "sigmoid", "leaky_relu", "identity"])
def test_scan_forward_matches_loop(dtype, name):
    rng, hext, a, bias, w = chain_case(dtype)
    m = a.shape[0]
    want = [hext[0].astype(np.float64)]
    for k in range(m):
        want.append(act_ref(a[k] + want[-1] @ w.T.astype(np.float64) + bias, name))
    tmp = np.zeros(hext.shape[1:], dtype=dtype)
    kd.scan_forward(hext, a, bias, np.ascontiguousarray(w.T), CODES[name], SLOPE, tmp)
    np.testing.assert_allclose(hext, np.stack(want), rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-5 if dtype == np.float32 else 1e-13)


def test_scan_forward_fast_tanh_float32():
    dtype = np.float32
    rng, hext, a, bias, w = chain_case(dtype)
    want = hext.astype(np.float64).copy()
    for k in range(a.shape[0]):
        want[k + 1] = np.tanh(a[k] + want[k] @ w.T + bias)
    kd.scan_forward(hext, a, bias, np.ascontiguousarray(w.T), ka.TANH_FAST, 0.0, np.zeros(hext.shape[1:], dtype))
    np.testing.assert_allclose(hext, want, atol=1e-5)


def forward_chain(hext, a, bias, w, name):
    for k in range(a.shape[0]):
        hext[k + 1] = act_ref(a[k] + hext[k] @ w.T + bias, name)
    return hext


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["tanh", "sigmoid", "leaky_relu"])
@pytest.mark.parametrize("start,stop", [(4, 0), (4, 1), (2, 0), (3, 3)])
def test_scan_gradient_matches_loop(dtype, name, start, stop):
    rng, hext, a, bias, w = chain_case(dtype, seed=21)
    hext = forward_chain(hext, a, bias, w, name)
    m, B, n = a.shape
    d = rng.normal(size=(m, B, n)).astype(dtype)
    inv_count = np.array([1.0, 0.5, 1.0, 1 / 3, 0.25], dtype=dtype)
    # reference: descending k, delta_k = d_k * act'(h_k), p_k = delta_k W, d_{k-1} = (d_{k-1} + p_k) * c_{k-1}
    rd = d.astype(np.float64).copy()
    rp = np.zeros((m, B, n))
    rdelta = np.zeros((m, B, n))
    for k in range(start, stop - 1, -1):
        rdelta[k] = rd[k] * deriv_ref_from_z(_pre(hext, a, bias, w, k), name)
        rp[k] = rdelta[k] @ w
        if k > 0:
            rd[k - 1] = (rd[k - 1] + rp[k]) * inv_count[k - 1]
    p = np.zeros((m, B, n), dtype=dtype)
    delta = np.zeros((m, B, n), dtype=dtype)
    kd.scan_gradient(d, hext, w, CODES[name], SLOPE, inv_count, start, stop, p, delta)
    t = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(d, rd, **t)
    np.testing.assert_allclose(p[stop:start + 1], rp[stop:start + 1], **t)
    np.testing.assert_allclose(delta[stop:start + 1], rdelta[stop:start + 1], **t)


def _pre(hext, a, bias, w, k):
    """Pre-activation of chain member ``k`` in float64."""
    return a[k].astype(np.float64) + hext[k].astype(np.float64) @ w.T.astype(np.float64) + bias


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("difference", [True, False])
@pytest.mark.parametrize("gname,fname,clamp", [("tanh", "identity", False), ("identity", "identity", False),
                                               ("identity", "tanh", False), ("tanh", "sigmoid", False),
                                               ("identity", "tanh", True), ("identity", "sigmoid", True)])
def test_scan_inverse_matches_loop(dtype, difference, gname, fname, clamp):
    """The chain scan of a learned (features ``identity``) or adjoint inverse (clamped or not) against a NumPy loop."""
    rng, hext, a, bias, w = chain_case(dtype, seed=22)
    hext = forward_chain(hext, a, bias, w, "tanh")
    m, B, n = a.shape
    v = (rng.normal(size=(n, n)) * 0.5).astype(dtype)  # inverse weight V [n_src, n]
    og = rng.normal(size=(m, B, n)).astype(dtype) * 0.3
    phi = functools.partial(FEATURES[fname], clamp=clamp)
    gf = act_ref(np.einsum("kbj,ij->kbi", phi(hext[1:].astype(np.float64)), v) + og, gname).astype(dtype)
    d = (rng.normal(size=(m, B, n)) * (1.0 if clamp else 0.2)).astype(dtype)  # targets outside the range too
    inv_count = np.array([0.5, 1.0, 1.0, 0.5, 1.0], dtype=dtype)
    start, stop = m - 1, 0
    rd = d.astype(np.float64).copy()
    rp = np.zeros((m, B, n))
    for k in range(start, stop - 1, -1):
        g_hat = act_ref(phi(hext[k + 1] + rd[k]) @ v.T.astype(np.float64) + og[k], gname)
        ref = gf[k] if difference else hext[k]
        rp[k] = g_hat - ref
        if k > 0:
            rd[k - 1] = (rd[k - 1] + rp[k]) * inv_count[k - 1]
    p = np.zeros((m, B, n), dtype=dtype)
    tmp = np.zeros((B, n), dtype=dtype)
    kd.scan_inverse(d, hext, np.ascontiguousarray(v.T), og, gf, CODES[gname], SLOPE, CODES[fname], SLOPE, clamp,
                    inv_count, start, stop, difference, p, tmp)
    t = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(p, rp, **t)
    np.testing.assert_allclose(d, rd, **t)


# ---------------------------------------------------------------- the inverse's pieces
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["tanh", "sigmoid", "leaky_relu", "identity"])
def test_inverse_finish(dtype, name):
    rng = np.random.default_rng(30)
    p = pre_activations(dtype, seed=31) / 2
    og = rng.uniform(-0.5, 0.5, p.shape).astype(dtype)
    og = np.where(np.abs(p + og) < 0.05, og + dtype(0.2), og)
    ref = rng.normal(size=p.shape).astype(dtype)
    want = act_ref(p + og, name) - ref
    kd.inverse_finish(p, og, ref, CODES[name], SLOPE)
    np.testing.assert_allclose(p, want, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["tanh", "sigmoid", "leaky_relu", "identity"])
def test_inverse_residual(dtype, name):
    rng = np.random.default_rng(32)
    zg = rng.uniform(-2, 2, (3, 4, 5))
    zg = np.where(np.abs(zg) < 0.05, 0.5, zg)
    g = act_ref(zg, name).astype(dtype)
    x = rng.normal(size=g.shape).astype(dtype)
    dg = np.zeros_like(g)
    loss = np.zeros(3)
    kd.inverse_residual(g, x, CODES[name], SLOPE, dg, loss)
    e = g.astype(np.float64) - x
    np.testing.assert_allclose(dg, e * deriv_ref_from_z(zg, name), **tol(dtype))
    np.testing.assert_allclose(loss, 0.5 * (e ** 2).sum(axis=(1, 2)), rtol=1e-6 if dtype == np.float32 else 1e-12)


def test_inverse_residual_is_the_gradient_of_the_reconstruction_loss():
    """``dg`` is d(1/2||act(z) - x||^2)/dz: checked by finite differences on z (float64, tanh)."""
    rng = np.random.default_rng(33)
    z = rng.normal(size=(1, 2, 3))
    x = rng.normal(size=z.shape)

    def loss_of(zz):
        out = np.zeros(1)
        kd.inverse_residual(np.tanh(zz), x, ka.TANH, 0.0, np.zeros_like(zz), out)
        return out[0]

    dg = np.zeros_like(z)
    kd.inverse_residual(np.tanh(z), x, ka.TANH, 0.0, dg, np.zeros(1))
    eps = 1e-6
    for i in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[i] += eps
        zm[i] -= eps
        assert dg[i] == pytest.approx((loss_of(zp) - loss_of(zm)) / (2 * eps), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_squares(dtype):
    d = np.random.default_rng(34).normal(size=(4, 3, 5)).astype(dtype)
    out = np.zeros(4)
    kd.sum_squares(d, out)
    np.testing.assert_allclose(out, 0.5 * (d.astype(np.float64) ** 2).sum(axis=(1, 2)),
                               rtol=1e-6 if dtype == np.float32 else 1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_noise(dtype):
    rng = np.random.default_rng(35)
    x = rng.normal(size=(2, 3, 4)).astype(dtype)
    noise = rng.normal(size=x.shape).astype(dtype)
    out = np.zeros_like(x)
    sigma = dtype(0.3)
    x_before, noise_before = x.copy(), noise.copy()
    kd.add_noise(x, noise, sigma, out)
    np.testing.assert_allclose(out, x_before + sigma * noise_before, **tol(dtype))
    np.testing.assert_array_equal(x, x_before)  # the clean input is untouched
    np.testing.assert_array_equal(noise, noise_before)


def test_all_finite_when_present():
    all_finite = getattr(kd, "all_finite", None)
    if all_finite is None:
        pytest.skip("no all_finite kernel in this version")
    for dtype in DTYPES:
        a = np.ones((3, 4), dtype=dtype)
        assert all_finite(a)
        for bad in (np.nan, np.inf, -np.inf):
            b = a.copy()
            b[2, 3] = bad
            assert not all_finite(b)


# ---------------------------------------------------------------- losses
def xent_ref(z, labels):
    z = z.astype(np.float64)
    mx = z.max(axis=1, keepdims=True)
    lse = mx[:, 0] + np.log(np.exp(z - mx).sum(axis=1))
    p = np.exp(z - lse[:, None])
    loss = lse - z[np.arange(len(labels)), labels]
    return loss, p


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1.0, -0.25])
def test_softmax_xent_matches_numpy(dtype, scale):
    rng = np.random.default_rng(40)
    z = (rng.normal(size=(6, 4)) * 2).astype(dtype)
    labels = np.array([0, 3, 3, 1, 2, 0], dtype=np.int64)
    loss = np.zeros(6, dtype=dtype)
    dz = np.zeros_like(z)
    kl.softmax_xent(z, labels, scale, loss, dz)
    rl, p = xent_ref(z, labels)
    np.testing.assert_allclose(loss, rl, **tol(dtype))
    np.testing.assert_allclose(dz, scale * (p - np.eye(4)[labels]), **tol(dtype))


def test_softmax_xent_gradient_matches_finite_differences():
    rng = np.random.default_rng(41)
    z = rng.normal(size=(3, 5))
    labels = np.array([4, 0, 2], dtype=np.int64)
    dz = np.zeros_like(z)
    kl.softmax_xent(z, labels, 1.0, np.zeros(3), dz)

    def total(zz):
        out = np.zeros(3)
        kl.softmax_xent(zz, labels, 1.0, out, np.zeros_like(zz))
        return out.sum()

    eps = 1e-6
    for i in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[i] += eps
        zm[i] -= eps
        assert dz[i] == pytest.approx((total(zp) - total(zm)) / (2 * eps), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_is_stable_for_huge_logits(dtype):
    z = np.array([[1e4, 0.0, -1e4], [-1e4, 1e4, 1e4 - 1.0], [1e4, 1e4, 1e4]], dtype=dtype)
    labels = np.array([1, 2, 0], dtype=np.int64)
    loss = np.zeros(3, dtype=dtype)
    dz = np.zeros_like(z)
    kl.softmax_xent(z, labels, 1.0, loss, dz)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(dz))
    rl, p = xent_ref(z, labels)
    np.testing.assert_allclose(loss, rl, rtol=1e-6)
    np.testing.assert_allclose(dz, p - np.eye(3)[labels], atol=1e-6)
    assert loss[0] == pytest.approx(1e4, rel=1e-6)
    assert loss[2] == pytest.approx(np.log(3.0), rel=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_squared_error(dtype):
    rng = np.random.default_rng(42)
    h = rng.normal(size=(5, 3)).astype(dtype)
    t = rng.normal(size=(5, 3)).astype(dtype)
    loss = np.zeros(5, dtype=dtype)
    dh = np.zeros_like(h)
    kl.squared_error(h, t, -0.5, loss, dh)
    np.testing.assert_allclose(loss, 0.5 * ((h.astype(np.float64) - t) ** 2).sum(axis=1), **tol(dtype))
    np.testing.assert_allclose(dh, -0.5 * (h.astype(np.float64) - t), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_argmax_rows_matches_numpy_including_ties(dtype):
    rng = np.random.default_rng(43)
    z = rng.integers(-2, 3, (50, 4)).astype(dtype)  # many ties: the first maximum wins, as np.argmax
    z[0] = [-1e4, -1e4, -1e4, -1e4]
    out = np.zeros(50, dtype=np.int64)
    kl.argmax_rows(z, out)
    np.testing.assert_array_equal(out, np.argmax(z, axis=1))
