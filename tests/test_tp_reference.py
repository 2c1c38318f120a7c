"""The engine's target propagation against an independent plain-NumPy SRN (Eqs. 13-24).

The reference below is written from the paper, not from the engine: forward
(Eqs. 14-15), step targets (Eq. 20), DTP back in time (Eq. 19), the linear
merge (Eqs. 21-22), local forward gradients (Eqs. 23-24), the output layer's
gradient and the inverse's reconstruction gradient.
"""

import numpy as np
import pytest

import tpgraph as tp
from tpgraph.merges import register_merge


def tanh_g(h, x_onehot, P):
    return np.tanh(h @ P["V_h"].T + x_onehot @ P["W_xh"].T + P["c_h"])


def reference_step_targets(P, x, y, alpha, n_in, n_out):
    """The plain SRN's forward pass and step displacements (Eqs. 14-15, 20): ``X``, ``h`` (1-based), ``e``."""
    L, B = x.shape
    X = np.eye(n_in)[x]
    h = [np.zeros((B, P["W_h"].shape[0]))]
    for t in range(L):
        h.append(np.tanh(X[t] @ P["W_xh"].T + h[-1] @ P["W_h"].T + P["b_h"]))
    z = [h[t + 1] @ P["W_hy"].T + P["b_y"] for t in range(L)]
    p = [np.exp(zz - zz.max(1, keepdims=True)) for zz in z]
    p = [pp / pp.sum(1, keepdims=True) for pp in p]
    e = [-alpha * ((p[t] - np.eye(n_out)[y[t]]) / B) @ P["W_hy"] for t in range(L)]
    return X, h, e


def reference_tp(P, x, y, alpha, n_in, n_out, noise=None, sigma=0.0, merge="linear", credit="dtp"):
    L, B = x.shape
    H = P["W_h"].shape[0]
    X = np.eye(n_in)[x]  # [L, B, n_in]
    Y = np.eye(n_out)[y]
    h = [np.zeros((B, H))]
    for t in range(L):
        h.append(np.tanh(X[t] @ P["W_xh"].T + h[-1] @ P["W_h"].T + P["b_h"]))
    z = [h[t + 1] @ P["W_hy"].T + P["b_y"] for t in range(L)]
    p = [np.exp(zz - zz.max(1, keepdims=True)) for zz in z]
    p = [pp / pp.sum(1, keepdims=True) for pp in p]
    loss = sum(-np.log(p[t][np.arange(B), y[t]]).mean() for t in range(L))
    dz = [(p[t] - Y[t]) / B for t in range(L)]
    # Eq. 20: step targets; Eq. 21: e_t
    e = [-alpha * dz[t] @ P["W_hy"] for t in range(L)]
    hat = [None] * (L + 1)
    hat[L] = h[L] + e[L - 1]
    for t in range(L, 1, -1):  # targets of h_{t-1} from h_t (1-based h list)
        if credit == "dtp":  # Eq. 19
            prop = tanh_g(hat[t], X[t - 1], P) + (h[t - 1] - tanh_g(h[t], X[t - 1], P))
        else:  # Eq. 11
            prop = tanh_g(hat[t], X[t - 1], P)
        if merge == "linear":  # Eq. 22
            hat[t - 1] = prop + e[t - 2]
        else:  # mean of the two displacements
            hat[t - 1] = h[t - 1] + 0.5 * ((prop - h[t - 1]) + e[t - 2])
    grads = {k: np.zeros_like(v) for k, v in P.items()}
    for t in range(1, L + 1):  # Eqs. 23-24: local loss 1/2||F(x_t, h_{t-1}) - hat_t||^2
        delta = (h[t] - hat[t]) * (1 - h[t] ** 2)
        grads["W_h"] += delta.T @ h[t - 1]
        grads["W_xh"] += delta.T @ X[t - 1]
        grads["b_h"] += delta.sum(0)
        grads["W_hy"] += alpha * dz[t - 1].T @ h[t]  # the output's local loss: alpha times its gradient
        grads["b_y"] += alpha * dz[t - 1].sum(0)
        # inverse: reconstruct h_{t-1} from F(x_t, h_{t-1} + noise)
        hn = h[t - 1] if noise is None else h[t - 1] + sigma * noise[t - 1]
        f = np.tanh(X[t - 1] @ P["W_xh"].T + hn @ P["W_h"].T + P["b_h"])
        g = tanh_g(f, X[t - 1], P)
        dg = (g - hn) * (1 - g ** 2)
        grads["V_h"] += dg.T @ f
        grads["c_h"] += dg.sum(0)
    return h, hat, grads, loss


def run_engine(L, B, H, n_in, n_out, alpha, seed, merge="linear", sigma=0.0, credit="dtp"):
    g = tp.build_srn(L, n_in, H, n_out, dtype="float64", merge=merge, noise=sigma, credit=credit)
    eng = tp.Engine(g, alpha=alpha, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for k in eng.params:  # random weights, not just the init
        eng.params[k] = rng.normal(0, 0.4, eng.params[k].shape)
    x = rng.integers(0, n_in, (L, B))
    y = rng.integers(0, n_out, (L, B))
    P = {k: v.copy() for k, v in eng.params.items()}
    batch = {("h_0",): np.zeros((1, B, H)), tuple(f"x_{t}" for t in range(1, L + 1)): x,
             tuple(f"l_{t}" for t in range(1, L + 1)): y}
    res = eng.step(batch, apply=False)
    return eng, P, x, y, res


@pytest.mark.parametrize("merge", ["linear", "mean"])
@pytest.mark.parametrize("credit", ["dtp", "tp"])
def test_engine_matches_numpy_reference(merge, credit):
    L, B, H, n_in, n_out, alpha = 7, 5, 6, 4, 3, 0.3
    eng, P, x, y, res = run_engine(L, B, H, n_in, n_out, alpha, seed=4, merge=merge, credit=credit)
    h, hat, grads, loss = reference_tp(P, x, y, alpha, n_in, n_out, merge=merge, credit=credit)
    assert res.loss == pytest.approx(loss, rel=1e-12)
    for t in range(1, L + 1):
        np.testing.assert_allclose(eng.value(f"h_{t}"), h[t], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(eng.target(f"h_{t}"), hat[t], rtol=1e-10, atol=1e-12)
    for k in grads:
        np.testing.assert_allclose(eng.grads[k], grads[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_denoising_inverse_gradient_matches_reference():
    L, B, H, n_in, n_out, alpha, sigma, seed = 5, 4, 6, 4, 3, 0.2, 0.3, 11
    eng, P, x, y, _ = run_engine(L, B, H, n_in, n_out, alpha, seed=seed, sigma=sigma)
    noise = np.random.default_rng(seed).standard_normal((L, B, H))  # the engine's draw, reproduced
    _, _, grads, _ = reference_tp(P, x, y, alpha, n_in, n_out, noise=noise, sigma=sigma)
    for k in ("V_h", "c_h"):
        np.testing.assert_allclose(eng.grads[k], grads[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_proposals_are_readable_per_edge():
    L, B, H, n_in, n_out, alpha = 4, 3, 5, 4, 3, 0.5
    eng, P, x, y, _ = run_engine(L, B, H, n_in, n_out, alpha, seed=7)
    h, hat, _, _ = reference_tp(P, x, y, alpha, n_in, n_out)
    X = np.eye(n_in)[x]
    # the DTP proposal from h_3 to h_2 (Eq. 19) and the step target from y_2 (Eq. 20)
    dtp = tanh_g(hat[3], X[2], P) + h[2] - tanh_g(h[3], X[2], P)
    np.testing.assert_allclose(eng.proposal("h_2", "h_3"), dtp, rtol=1e-10)
    step = eng.proposal("h_2", "y_2")
    props = eng.proposals("h_2")
    assert set(props) == {"h_3", "y_2"}
    np.testing.assert_allclose(step - h[2] + dtp, hat[2], rtol=1e-10)  # linear merge
    assert eng.local_loss("h_2") == pytest.approx(0.5 * np.sum((hat[2] - h[2]) ** 2))


@pytest.mark.parametrize("builtin", ["linear", "mean"])
def test_python_merge_path_equals_fused_builtin(builtin):
    """A merge registered as a Python function runs member by member; it must agree with the fused kernel."""
    name = f"py_{builtin}"
    if builtin == "linear":
        fn = lambda h, props: h + sum(p - h for p in props)
    else:
        fn = lambda h, props: h + sum(p - h for p in props) / len(props)
    register_merge(name, fn, overwrite=True)
    a, *_ = run_engine(6, 3, 5, 4, 3, 0.4, seed=2, merge=builtin)
    b, *_ = run_engine(6, 3, 5, 4, 3, 0.4, seed=2, merge=name)
    for t in range(1, 7):
        np.testing.assert_allclose(b.target(f"h_{t}"), a.target(f"h_{t}"), rtol=1e-12)
    for k in a.grads:
        np.testing.assert_allclose(b.grads[k], a.grads[k], rtol=1e-12, atol=1e-14)


def test_updates_and_warmup():
    """An applied step moves parameters by the optimiser's update; the warm-up moves only the inverse."""
    model = tp.SRN(4, 6, 4, dtype="float64", optimizer="sgd", lr_f=0.1, lr_g=0.2, lr_y=0.3, alpha=0.5)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, (5, 3)), rng.integers(0, 4, (5, 3))
    before = {k: v.copy() for k, v in model.params.items()}
    model.train_step(x, y, update_forward=False)
    for k in ("W_xh", "W_h", "b_h", "W_hy", "b_y"):
        np.testing.assert_array_equal(model.params[k], before[k])
    assert not np.array_equal(model.params["V_h"], before["V_h"])
    eng = model.engine(5)
    np.testing.assert_allclose(eng.updates["V_h"], -0.2 * eng.grads["V_h"], rtol=1e-12)
    before = {k: v.copy() for k, v in model.params.items()}
    model.train_step(x, y)
    np.testing.assert_allclose(model.params["W_h"] - before["W_h"], -0.1 * eng.grads["W_h"], rtol=1e-10)
    # the output layer follows the plain gradient: its local gradient divided by alpha
    np.testing.assert_allclose(eng.updates["W_hy"], -0.3 / 0.5 * eng.grads["W_hy"], rtol=1e-10)


def test_merge_with_context_weights_the_step_target():
    """A merge that knows its sources: the DTP proposal plus e_t / (t + 1) (NOTES: an earlier variant)."""
    seen = []

    def weighted(h, proposals, node, sources):
        seen.append((node, tuple(sources)))
        t = int(node.split("_")[1])
        out = h.copy()
        for tau, src in zip(proposals, sources):
            w = 1.0 / (t + 1) if src.startswith("y_") else 1.0
            out += w * (tau - h)
        return out

    register_merge("weighted_step_py", weighted, overwrite=True)
    L, B, H, n_in, n_out, alpha = 5, 3, 4, 4, 3, 0.7
    eng, P, x, y, _ = run_engine(L, B, H, n_in, n_out, alpha, seed=5, merge="weighted_step_py")
    fused, *_ = run_engine(L, B, H, n_in, n_out, alpha, seed=5, merge="weighted_step")  # the built-in
    assert ("h_2", ("y_2", "h_3")) in seen or ("h_2", ("h_3", "y_2")) in seen
    # the reference, written out: hat_L = h_L + e_L/(L+1); hat_{t-1} = DTP(hat_t) + e_{t-1}/t
    X = np.eye(n_in)[x]
    Y = np.eye(n_out)[y]
    h = [np.zeros((B, H))]
    for t in range(L):
        h.append(np.tanh(X[t] @ P["W_xh"].T + h[-1] @ P["W_h"].T + P["b_h"]))
    e = []
    for t in range(L):
        z = h[t + 1] @ P["W_hy"].T + P["b_y"]
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        e.append(-alpha * ((p - Y[t]) / B) @ P["W_hy"])
    hat = [None] * (L + 1)
    hat[L] = h[L] + e[L - 1] / (L + 1)
    for t in range(L, 1, -1):
        prop = tanh_g(hat[t], X[t - 1], P) + h[t - 1] - tanh_g(h[t], X[t - 1], P)
        hat[t - 1] = prop + e[t - 2] / t
    for t in range(1, L + 1):
        np.testing.assert_allclose(eng.target(f"h_{t}"), hat[t], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(fused.target(f"h_{t}"), hat[t], rtol=1e-10, atol=1e-12)
