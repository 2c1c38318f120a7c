"""The Jacobian-matching inverse loss (``loss="jacobian"``; Ernoult et al. 2022).

For one dense node ``f(h) = tanh(W h + a + b)`` (``a`` the other inputs'
``W_x x``) and the inverse ``g(v) = tanh(V v + a + c)``, with ``eps`` at the
input and ``eta`` at the output:

    L = [ -eps . (g(f(h + eps)) - g(f(h))) + 1/2 ||g(f(h) + eta) - g(f(h))||^2 ] / sigma^2,

summed over the batch. Written here in plain NumPy from the formula, checked
against finite differences, shown to be least where ``g``'s Jacobian is the
transpose of ``f``'s, and then compared with the engine on an SRN with the
noise the engine drew.
"""

import numpy as np
import pytest
from numeric import central_differences

import tpgraph as tp
from tpgraph.errors import ConfigError, GraphError
from tpgraph.models.srn import SRN
from tpgraph.train import Config


def jacobian_reference(V, c, W, a, b, h, eps, eta, sigma):
    """Loss and ``(dV, dc)`` of the Jacobian-matching loss for one dense node (``eps``, ``eta`` already scaled)."""
    f = np.tanh(h @ W.T + a + b)
    fn = np.tanh((h + eps) @ W.T + a + b)
    ve = f + eta
    gf = np.tanh(f @ V.T + a + c)
    gn = np.tanh(fn @ V.T + a + c)
    ge = np.tanh(ve @ V.T + a + c)
    d = ge - gf
    loss = (-np.sum(eps * (gn - gf)) + 0.5 * np.sum(d ** 2)) / sigma ** 2
    dn = -eps * (1 - gn ** 2) / sigma ** 2
    de = d * (1 - ge ** 2) / sigma ** 2
    df = (eps - d) * (1 - gf ** 2) / sigma ** 2
    return loss, dn.T @ fn + de.T @ ve + df.T @ f, dn.sum(0) + de.sum(0) + df.sum(0)


def _problem(seed=0, B=4, n=5, sigma=0.3):
    rng = np.random.default_rng(seed)
    return dict(V=rng.normal(0, 0.6, (n, n)), c=rng.normal(0, 0.2, n), W=rng.normal(0, 0.6, (n, n)),
                a=rng.normal(0, 0.5, (B, n)), b=rng.normal(0, 0.2, n), h=rng.uniform(-0.9, 0.9, (B, n)),
                eps=sigma * rng.standard_normal((B, n)), eta=sigma * rng.standard_normal((B, n)), sigma=sigma)


def test_reference_gradient_matches_central_differences():
    P = _problem()
    _, dV, dc = jacobian_reference(**P)
    for name, grad in (("V", dV), ("c", dc)):
        num = central_differences(lambda Q: jacobian_reference(**Q)[0], P, name)
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8, err_msg=name)


def test_linear_maps_the_expected_loss_is_least_at_the_transpose():
    """For linear f and g the loss's expectation is -tr(V W) + 1/2 ||V||^2: least at V = W^T, not W^-1."""
    rng = np.random.default_rng(5)
    n, sigma, samples = 4, 0.1, 200000
    W = rng.normal(size=(n, n)) + 2 * np.eye(n)
    eps, eta = sigma * rng.standard_normal((2, samples, n))

    def loss(V):  # identity activations: g(f(h + eps)) - g(f(h)) = V W eps, g(v + eta) - g(v) = V eta
        return (-np.sum(eps * (eps @ W.T @ V.T)) + 0.5 * np.sum((eta @ V.T) ** 2)) / sigma ** 2 / samples

    at_t, at_inv = loss(W.T), loss(np.linalg.inv(W))
    assert at_t == pytest.approx(-0.5 * np.sum(W ** 2), rel=0.02)
    assert at_t < at_inv
    for _ in range(5):  # and below any nearby matrix
        assert at_t < loss(W.T + 0.3 * rng.normal(size=(n, n)))


L, B, H, N_IN, N_OUT, SIGMA, SEED = 4, 3, 5, 4, 3, 0.2, 11


def _srn_step(dtype="float64"):
    model = SRN(N_IN, H, N_OUT, dtype=dtype, seed=SEED, noise_sigma=SIGMA, inverse_loss="jacobian", lr_g=1e-2,
                fast_tanh=False)
    rng = np.random.default_rng(SEED + 100)
    for k in model.params:
        model.params[k] = rng.normal(0, 0.5, model.params[k].shape).astype(dtype)
    P = {k: model.params[k].astype(np.float64) for k in model.params}
    x = rng.integers(0, N_IN, (L, B))
    y = rng.integers(0, N_OUT, (L, B))
    model.train_step(x, y, update_forward=False)
    return model, model.engine(L), P, x


def _srn_reference(P, x, noise, eta):
    X = np.eye(N_IN)[x]
    h = np.zeros((B, H))
    dV, dc, losses = np.zeros_like(P["V_h"]), np.zeros_like(P["c_h"]), []
    for t in range(L):
        a = X[t] @ P["W_xh"].T
        loss, gV, gc = jacobian_reference(P["V_h"], P["c_h"], P["W_h"], a, P["b_h"], h, SIGMA * noise[t],
                                          SIGMA * eta[t], SIGMA)
        losses.append(loss)
        dV += gV
        dc += gc
        h = np.tanh(a + h @ P["W_h"].T + P["b_h"])
    return dV, dc, losses


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 2e-4)])
def test_engine_jacobian_loss_gradient_matches_reference(dtype, tol):
    model, eng, P, x = _srn_step(dtype)
    rng = np.random.default_rng(SEED)  # the engine's draws, reproduced: eps for every step, then eta
    noise = rng.standard_normal((L, B, H), dtype=np.dtype(dtype)).astype(np.float64)
    eta = rng.standard_normal((L, B, H), dtype=np.dtype(dtype)).astype(np.float64)
    sid, _ = eng.plan.where["h_1"]
    np.testing.assert_allclose(eng.buf.stacks[sid].slots[1].noise, noise)
    dV, dc, losses = _srn_reference(P, x, noise, eta)
    scale = np.abs(dV).max()
    np.testing.assert_allclose(eng.grads["V_h"], dV, rtol=tol, atol=tol * scale)
    np.testing.assert_allclose(eng.grads["c_h"], dc, rtol=tol, atol=tol * scale)
    rec = eng.reconstruction_losses()
    for t in range(1, L + 1):
        assert rec[(f"h_{t}", f"h_{t - 1}")] == pytest.approx(losses[t - 1], rel=max(tol, 1e-10) * 10, abs=tol)
    # the comparison can fail: without the eta term (the difference of g at h_v) the gradient differs
    dV0 = np.zeros_like(dV)
    Pn = dict(P)
    hh = np.zeros((B, H))
    X = np.eye(N_IN)[x]
    for t in range(L):
        a = X[t] @ P["W_xh"].T
        dV0 += jacobian_reference(Pn["V_h"], Pn["c_h"], Pn["W_h"], a, Pn["b_h"], hh, SIGMA * noise[t],
                                  0 * eta[t], SIGMA)[1]
        hh = np.tanh(a + hh @ P["W_h"].T + P["b_h"])
    assert np.abs(dV0 - dV).max() > 1e-3 * scale
    for k in ("W_xh", "W_h", "b_h", "W_hy", "b_y"):
        np.testing.assert_array_equal(model.params[k], P[k])


def test_jacobian_loss_needs_noise_and_no_context():
    g = tp.Graph()
    g.input("a", 3)
    g.dense("b", ["a"], 3, weights=["W"])
    with pytest.raises(GraphError, match="identically 0 without noise"):
        g.add_inverse("b", of="a", weight="V", loss="jacobian")
    with pytest.raises(ConfigError, match="needs noise_sigma > 0"):
        SRN(3, 4, 3, inverse_loss="jacobian")
    with pytest.raises(ConfigError, match="needs method.noise_sigma > 0"):
        Config.from_dict({"method": {"inverse_loss": "jacobian"}})
    with pytest.raises((ConfigError, GraphError), match="without a context"):
        SRN(3, 4, 3, inverse_loss="jacobian", noise_sigma=0.1, inverse="joint")


def test_learning_the_transpose_in_an_srn():
    """Trained on the loss alone, the inverse's difference g(h_v + eta) - g(h_v) approaches J_f^T eta."""
    model = SRN(N_IN, H, N_OUT, dtype="float64", seed=3, noise_sigma=0.05, inverse_loss="jacobian", lr_g=3e-3,
                fast_tanh=False)
    rng = np.random.default_rng(0)
    x = rng.integers(0, N_IN, (6, 16))
    y = rng.integers(0, N_OUT, (6, 16))

    def mismatch():  # mean of ||J_g - J_f^T||_F^2 over the steps of this batch, from the weights
        P = model.params
        X, h, out = np.eye(N_IN)[x], np.zeros((16, H)), 0.0
        for t in range(6):
            a = X[t] @ P["W_xh"].T
            v = np.tanh(a + h @ P["W_h"].T + P["b_h"])
            gv = np.tanh(v @ P["V_h"].T + a + P["c_h"])
            Jg = (1 - gv ** 2)[:, :, None] * P["V_h"][None]          # [B, n_u, n_v]
            JfT = (P["W_h"].T[None] * (1 - v ** 2)[:, None, :])        # [B, n_u, n_v]
            out += np.mean(np.sum((Jg - JfT) ** 2, axis=(1, 2)))
            h = v
        return out / 6

    before = mismatch()
    for _ in range(1500):
        model.train_step(x, y, update_forward=False)
    assert mismatch() < 0.5 * before
