"""The adjoint inverse kind (``kind="adjoint"``): ``g(v) = V phi(v) + a + c``.

``phi`` is the antiderivative of the forward activation's derivative written
through its output (``h - h^3/3`` for tanh), so ``g``'s Jacobian ``V
diag(act'(.))`` can be the step's transposed Jacobian ``W^T diag(act'(.))``
exactly. Checked here: the features against finite differences and the
kernel against the NumPy reference; the Jacobian claim; the engine's values,
targets and inverse gradients (every loss) against a plain-NumPy SRN written
from the formulas; the Jacobian-matching loss's stationary point at ``V =
W^T``; training towards it; the refusals.
"""

import tomllib

import numpy as np
import pytest
from numeric import central_differences
from test_tp_reference import reference_step_targets

import tpgraph as tp
from tpgraph.buffers import Buffers, buffer_bytes
from tpgraph.errors import ConfigError, GraphError
from tpgraph.inverses import AdjointInverse, adjoint_features, get_inverse_kind
from tpgraph.kernels import activations as ka
from tpgraph.models.srn import SRN
from tpgraph.plan import compile_plan
from tpgraph.train import Config
from tpgraph.train.config import to_toml

ACTS = {"tanh": (np.tanh, lambda h: 1 - h ** 2), "sigmoid": (lambda z: 1 / (1 + np.exp(-z)), lambda h: h * (1 - h)),
        "relu": (lambda z: np.maximum(z, 0), lambda h: (h > 0) * 1.0),
        "leaky_relu": (lambda z: np.where(z > 0, z, 0.07 * z), lambda h: np.where(h > 0, 1.0, 0.07)),
        "identity": (lambda z: z, lambda h: np.ones_like(h))}


@pytest.mark.parametrize("act", list(ACTS))
def test_features_derivative_is_the_activations_derivative_through_its_output(act):
    f, deriv = ACTS[act]
    z = np.random.default_rng(1).uniform(-2.5, 2.5, 200)
    h = f(z)
    h = h[np.abs(h) > 1e-3]  # away from the kinks (relu's h = 0, where phi is one-sided)
    step = 1e-6
    num = (adjoint_features(h + step, act, 0.07) - adjoint_features(h - step, act, 0.07)) / (2 * step)
    np.testing.assert_allclose(num, deriv(h), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", list(ACTS) + ["tanh_fast"])
@pytest.mark.parametrize("clamp", [False, True])
def test_feature_kernel_matches_reference(dtype, act, clamp):
    rng = np.random.default_rng(2)
    a, b = rng.uniform(-1.5, 1.5, (2, 6, 9)).astype(dtype)  # sums out of tanh's and the sigmoid's ranges too
    code = ka.TANH_FAST if act == "tanh_fast" else ka.ACTIVATIONS[act]
    ref_act = "tanh" if act == "tanh_fast" else act
    out = np.empty_like(a)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-14, atol=1e-14)
    ka.feature_sum(a, b, code, 0.07, clamp, out)
    np.testing.assert_allclose(out, adjoint_features(a.astype(np.float64) + b, ref_act, 0.07, clamp), **tol)
    ka.feature_sum(a, None, code, 0.07, clamp, out)
    np.testing.assert_allclose(out, adjoint_features(a.astype(np.float64), ref_act, 0.07, clamp), **tol)
    if act == "identity":  # code IDENTITY is the plain sum: the learned kind's input
        ka.feature_sum(a, b, code, 0.07, clamp, out)
        np.testing.assert_array_equal(out, a + b)


@pytest.mark.parametrize("act, lo, hi", [("tanh", -1.0, 1.0), ("sigmoid", 0.0, 1.0)])
def test_clamped_features_are_flat_outside_the_range_and_equal_inside(act, lo, hi):
    x = np.linspace(lo - 2, hi + 2, 401)
    inside = (x >= lo) & (x <= hi)
    np.testing.assert_array_equal(adjoint_features(x[inside], act, clamp=True), adjoint_features(x[inside], act))
    assert np.all(adjoint_features(x[x > hi], act, clamp=True) == adjoint_features(hi, act))
    assert np.all(adjoint_features(x[x < lo], act, clamp=True) == adjoint_features(lo, act))
    # the plain tanh feature turns back beyond 1 and grows as -h^3/3: what the clamp removes
    if act == "tanh":
        assert adjoint_features(10.0, act) < -300 and adjoint_features(10.0, act, clamp=True) == pytest.approx(2 / 3)


def test_jacobian_is_the_transpose_at_v_equals_w_transpose():
    """At ``V = W^T`` the adjoint inverse's Jacobian at ``h_v`` is ``J_f^T``, the learned kind's is not."""
    rng = np.random.default_rng(3)
    n_u, n_v = 4, 6
    W = rng.normal(0, 0.7, (n_v, n_u))
    a, hu = rng.normal(0, 0.4, n_v), rng.uniform(-0.8, 0.8, n_u)
    hv = np.tanh(W @ hu + a)
    JfT = W.T * (1 - hv ** 2)[None, :]
    kind = get_inverse_kind("adjoint")

    def jac(fn):
        step, cols = 1e-6, []
        for j in range(n_v):
            e = np.zeros(n_v)
            e[j] = step
            cols.append((fn(hv + e) - fn(hv - e)) / (2 * step))
        return np.stack(cols, axis=1)

    inv = tp.nodes.Inverse(of="u", weight="V", act="identity", kind="adjoint")
    g = lambda v: kind.reference(inv, v[None], others=np.zeros((1, n_u)), inverse_weight=W.T)[0]  # noqa: E731
    np.testing.assert_allclose(jac(g), JfT, rtol=1e-7, atol=1e-9)
    learned = lambda v: np.tanh(W.T @ v)  # noqa: E731
    assert np.abs(jac(learned) - JfT).max() > 0.05


# ---------------------------------------------------------------------- the engine on an SRN
L, B, H, N_IN, N_OUT, SIGMA, SEED, ALPHA = 5, 3, 5, 4, 3, 0.2, 7, 0.3


def tanh_features(v):
    return adjoint_features(v, "tanh")


def clamped_tanh_features(v):
    return adjoint_features(v, "tanh", clamp=True)


def reference(P, x, y, loss, noise=None, eta=None, phi=tanh_features, alpha=ALPHA):
    """Forward, DTP targets with the linear merge, and the inverse's gradients (``loss``), all in NumPy."""

    def adjoint_g(v, X, P):
        return phi(v) @ P["V_h"].T + X @ P["W_xh"].T + P["c_h"]

    X, h, e = reference_step_targets(P, x, y, alpha, N_IN, N_OUT)
    hat = [None] * (L + 1)
    hat[L] = h[L] + e[L - 1]
    for t in range(L, 1, -1):
        hat[t - 1] = h[t - 1] + adjoint_g(hat[t], X[t - 1], P) - adjoint_g(h[t], X[t - 1], P) + e[t - 2]
    dV, dc = np.zeros_like(P["V_h"]), np.zeros_like(P["c_h"])
    for t in range(1, L + 1):
        Xt = X[t - 1]

        def f(hh):
            return np.tanh(Xt @ P["W_xh"].T + hh @ P["W_h"].T + P["b_h"])

        eps = SIGMA * noise[t - 1]
        fn, fv = f(h[t - 1] + eps), h[t]
        gn, gf = adjoint_g(fn, Xt, P), adjoint_g(fv, Xt, P)
        if loss == "reconstruction":  # identity act: the residuals are the pre-activation gradients
            parts = [(gn - (h[t - 1] + eps), fn)]
        elif loss == "difference":
            r = gn - gf - eps
            parts = [(r, fn), (-r, fv)]
        else:
            ve = fv + SIGMA * eta[t - 1]
            d = adjoint_g(ve, Xt, P) - gf
            parts = [(-eps / SIGMA ** 2, fn), (d / SIGMA ** 2, ve), ((eps - d) / SIGMA ** 2, fv)]
        for r, inp in parts:
            dV += r.T @ phi(inp)
            dc += r.sum(0)
    return h, hat, dV, dc


def engine_step(loss, dtype="float64", merge="linear", kind="adjoint", alpha=ALPHA):
    g = tp.build_srn(L, N_IN, H, N_OUT, dtype=dtype, noise=SIGMA, inverse=kind, inverse_loss=loss,
                     merge=merge)
    eng = tp.Engine(g, alpha=alpha, seed=SEED, fast_tanh=False)
    rng = np.random.default_rng(SEED + 1)
    for k in eng.params:  # random weights, not just the init
        eng.params[k] = rng.normal(0, 0.4, eng.params[k].shape).astype(dtype)
    x, y = rng.integers(0, N_IN, (L, B)), rng.integers(0, N_OUT, (L, B))
    P = {k: v.astype(np.float64) for k, v in eng.params.items()}
    batch = {("h_0",): np.zeros((1, B, H), dtype=dtype), tuple(f"x_{t}" for t in range(1, L + 1)): x,
             tuple(f"l_{t}" for t in range(1, L + 1)): y}
    eng.step(batch, apply=False)
    draws = np.random.default_rng(SEED)  # the engine's draws: eps for every step, then eta
    noise = draws.standard_normal((L, B, H), dtype=np.dtype(dtype)).astype(np.float64)
    eta = draws.standard_normal((L, B, H), dtype=np.dtype(dtype)).astype(np.float64)
    return eng, P, x, y, noise, eta


@pytest.mark.parametrize("loss", ["reconstruction", "difference", "jacobian"])
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 3e-4)])
def test_engine_matches_numpy_reference(loss, dtype, tol):
    eng, P, x, y, noise, eta = engine_step(loss, dtype)
    h, hat, dV, dc = reference(P, x, y, loss, noise, eta)
    for t in range(1, L + 1):
        np.testing.assert_allclose(eng.target(f"h_{t}"), hat[t], rtol=tol, atol=tol)
    scale = np.abs(dV).max()
    np.testing.assert_allclose(eng.grads["V_h"], dV, rtol=tol, atol=tol * scale)
    np.testing.assert_allclose(eng.grads["c_h"], dc, rtol=tol, atol=tol * scale)
    # the comparison can fail: without the features (a linear inverse in h) targets and gradients differ
    _, hat_lin, dV_lin, _ = reference(P, x, y, loss, noise, eta, phi=lambda v: v)
    assert np.abs(eng.grads["V_h"] - dV_lin).max() > 100 * tol * scale
    assert np.abs(eng.target("h_1") - hat_lin[1]).max() > 100 * tol


@pytest.mark.parametrize("loss", ["reconstruction", "jacobian"])
def test_clamped_kind_matches_numpy_reference_with_targets_out_of_range(loss):
    """A large step size sends targets outside (-1, 1): the clamped kind follows its reference, not the plain one."""
    eng, P, x, y, noise, eta = engine_step(loss, kind="adjoint_clamped", alpha=30.0)
    h, hat, dV, dc = reference(P, x, y, loss, noise, eta, phi=clamped_tanh_features, alpha=30.0)
    _, hat_plain, _, _ = reference(P, x, y, loss, noise, eta, alpha=30.0)
    assert max(np.abs(hat[t]).max() for t in range(1, L + 1)) > 1.5  # the targets did leave the range
    for t in range(1, L + 1):
        np.testing.assert_allclose(eng.target(f"h_{t}"), hat[t], rtol=1e-10, atol=1e-10)
    scale = np.abs(dV).max()
    np.testing.assert_allclose(eng.grads["V_h"], dV, rtol=1e-10, atol=1e-10 * scale)
    np.testing.assert_allclose(eng.grads["c_h"], dc, rtol=1e-10, atol=1e-10 * scale)
    assert max(np.abs(hat[t] - hat_plain[t]).max() for t in range(1, L + 1)) > 1e-3


@pytest.mark.parametrize("merge", ["clipped", "mean"])
def test_chain_scan_with_other_merges_matches_unstacked_plan(merge):
    """Without noise (whose draws differ between the plans) three steps, training the inverse, agree."""
    def run(stacking):
        g = tp.build_srn(L, N_IN, H, N_OUT, dtype="float64", inverse="adjoint", merge=merge)
        params = g.init_params(SEED)
        rng = np.random.default_rng(4)
        for k in sorted(params):
            params[k] = rng.normal(0, 0.4, params[k].shape)
        eng = tp.Engine(compile_plan(g, stacking=stacking), params, alpha=ALPHA, lr=0.05, seed=SEED)
        x, y = rng.integers(0, N_IN, (L, B)), rng.integers(0, N_OUT, (L, B))
        batch = {("h_0",): np.zeros((1, B, H)), tuple(f"x_{t}" for t in range(1, L + 1)): x,
                 tuple(f"l_{t}" for t in range(1, L + 1)): y}
        for _ in range(3):
            eng.step(batch)
        return eng

    a, b = run(True), run(False)
    assert any(st.chain for st in a.plan.stacks) and not any(st.chain for st in b.plan.stacks)
    for eng in (a, b):  # the estimate counts the features' buffer
        assert buffer_bytes(eng.plan, 4, eng.graph.dtype) == Buffers(eng.plan, 4, eng.graph.dtype).nbytes
    for t in range(1, L + 1):
        np.testing.assert_allclose(a.target(f"h_{t}"), b.target(f"h_{t}"), rtol=1e-10, atol=1e-12)
    for k in a.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------- the Jacobian-matching loss
def jacobian_loss(P, h, a, eps, eta, sigma):
    """The loss for one tanh node ``f(h) = tanh(W h + a)`` and the adjoint inverse, and its ``dV``."""
    f = np.tanh(h @ P["W"].T + a)
    fn = np.tanh((h + eps) @ P["W"].T + a)

    def g(v):
        return adjoint_features(v) @ P["V"].T + a @ P["U"].T

    d = g(f + eta) - g(f)
    loss = (-np.sum(eps * (g(fn) - g(f))) + 0.5 * np.sum(d ** 2)) / sigma ** 2
    phi = adjoint_features
    dV = (-eps.T @ phi(fn) + d.T @ phi(f + eta) + (eps - d).T @ phi(f)) / sigma ** 2
    return loss, dV


def _problem(seed, samples, n_u=4, n_v=5, sigma=0.2):
    rng = np.random.default_rng(seed)
    return dict(P=dict(W=rng.normal(0, 0.6, (n_v, n_u)), V=rng.normal(0, 0.6, (n_u, n_v)),
                       U=rng.normal(0, 0.5, (n_u, n_v))),
                h=rng.uniform(-0.8, 0.8, (samples, n_u)), a=rng.normal(0, 0.5, (samples, n_v)),
                eps=sigma * rng.standard_normal((samples, n_u)), eta=sigma * rng.standard_normal((samples, n_v)),
                sigma=sigma)


def test_reference_gradient_matches_central_differences():
    Q = _problem(0, 6)
    _, dV = jacobian_loss(**Q)
    num = central_differences(lambda P: jacobian_loss(**{**Q, "P": P})[0], Q["P"], "V")
    np.testing.assert_allclose(dV, num, rtol=1e-6, atol=1e-8)


def test_the_transpose_is_the_stationary_point():
    """The mean gradient vanishes at ``V = W^T`` (to the noise's second order), not at other matrices."""
    Q = _problem(1, 100000, sigma=0.02)
    W = Q["P"]["W"]
    at_t = jacobian_loss(**{**Q, "P": {**Q["P"], "V": W.T}})[1] / 100000
    at_v = jacobian_loss(**Q)[1] / 100000
    assert np.abs(at_t).max() < 0.02 * np.abs(at_v).max()
    # and the gradient points from V towards W^T: (V - W^T) weighted by the states' mean act'^2
    assert np.sum(at_v * (Q["P"]["V"] - W.T)) > 0


def test_training_drives_v_to_the_transpose():
    model = SRN(N_IN, H, N_OUT, dtype="float64", seed=3, noise_sigma=0.05, inverse="adjoint",
                inverse_loss="jacobian", lr_g=3e-3, fast_tanh=False)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, N_IN, (6, 16)), rng.integers(0, N_OUT, (6, 16))

    def gap():
        return np.linalg.norm(model.params["V_h"] - model.params["W_h"].T)

    before = gap()
    for _ in range(1500):
        model.train_step(x, y, update_forward=False)
    assert gap() < 0.1 * before


# ---------------------------------------------------------------------- refusals and plumbing
def test_refusals():
    g = tp.Graph()
    g.input("a", 3)
    g.dense("b", ["a"], 3, weights=["W"])
    g.input("s", 3)
    with pytest.raises(GraphError, match="its act must be 'identity'"):
        g.add_inverse("b", of="a", weight="V", kind="adjoint", act="tanh")
    with pytest.raises(GraphError, match="takes no context"):
        g.add_inverse("b", of="a", weight="V", kind="adjoint", act="identity", context="V_s")
    with pytest.raises(ConfigError, match="method.inverse"):
        Config.from_dict({"method": {"inverse": "adjoin"}})
    assert isinstance(get_inverse_kind("adjoint"), AdjointInverse)
    g.add_inverse("b", of="a", weight="V", kind="adjoint")  # act left out: the kind's own
    assert g.node("b").inverses["a"].act == "identity"
    g.add_inverse("b", of="a", weight="V")
    assert g.node("b").inverses["a"].act == "tanh"


def test_srn_shares_the_learned_models_initialisation_and_config_round_trip():
    a = SRN(3, 6, 3, seed=5, inverse="adjoint", noise_sigma=0.1, inverse_loss="jacobian")
    b = SRN(3, 6, 3, seed=5, noise_sigma=0.1, inverse_loss="jacobian")
    for k in b.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    inv = a.graph(2).node("h_2").inverses["h_1"]
    assert (inv.kind, inv.act) == ("adjoint", "identity")
    cfg = Config.from_dict({"method": {"inverse": "adjoint", "noise_sigma": 0.1, "inverse_loss": "jacobian"}})
    assert Config.from_dict(tomllib.loads(to_toml(cfg))) == cfg
    assert cfg.method.trains_inverse()
