"""The joint (many-to-one) inverse: one learned inverse takes the targets of both consumers of h_{t-1}.

The reference below is a plain-NumPy SRN written from the formulas, not from
the engine:

    G2_t(h, y) = tanh(V_h h + V_y y + W_xh x_t + c_h)     (y = 0 for t = 1: h_0 has no output)
    h_hat_L     = h_L - alpha dE_L/dh_L
    h_hat_{t-1} = h_{t-1} + G2_t(h_hat_t, y_hat_{t-1}) - G2_t(h_t, y_{t-1})    (dtp; tp: G2_t(h_hat_t, y_hat_{t-1}))
    y_hat_t     = y_t - alpha dE_t/dy_t

and the inverse reconstructs h_{t-1} + eps from (F(x_t, h_{t-1} + eps), W_hy (h_{t-1} + eps) + b_y).
"""

import numpy as np
import pytest
from numeric import central_differences

import tpgraph as tp
from tpgraph.alignment import reference_engine
from tpgraph.buffers import Buffers, buffer_bytes
from tpgraph.errors import ConfigError, GraphError
from tpgraph.plan import compile_plan

L, B, H, N_IN, N_OUT = 5, 3, 6, 4, 3


def _batch(x, y):
    return {("h_0",): np.zeros((1, B, H)), tuple(f"x_{t}" for t in range(1, L + 1)): x,
            tuple(f"l_{t}" for t in range(1, L + 1)): y}


def _engine(stacking=True, noise=0.0, credit="dtp", seed=3, inverse_loss="reconstruction", truncate=None):
    g = tp.build_srn(L, N_IN, H, N_OUT, dtype="float64", inverse="joint", noise=noise, credit=credit,
                     inverse_loss=inverse_loss, truncate=truncate)
    eng = tp.Engine(compile_plan(g, stacking=stacking), alpha=1.5, seed=seed)
    rng = np.random.default_rng(seed + 10)
    for k in eng.params:  # random weights, not the init
        eng.params[k] = rng.normal(0, 0.5, eng.params[k].shape)
    x = rng.integers(0, N_IN, (L, B))
    y = rng.integers(0, N_OUT, (L, B))
    return eng, {k: v.copy() for k, v in eng.params.items()}, x, y


def G2(h, y, xo, P):
    return np.tanh(h @ P["V_h"].T + y @ P["V_y"].T + xo @ P["W_xh"].T + P["c_h"])


def reference_joint(P, x, y, alpha, eps=None, credit="dtp", cut_back=(), difference=False):
    """Values, targets of h_1..h_L, and the gradient of every group (``eps [L, B, H]``: the inverse's noise).

    ``cut_back``: the t whose edge h_{t-1} -> h_t is cut (truncation): h_{t-1} then keeps its step target.
    """
    X = np.eye(N_IN)[x]
    Y = np.eye(N_OUT)[y]
    h = [np.zeros((B, H))]
    for t in range(L):
        h.append(np.tanh(X[t] @ P["W_xh"].T + h[-1] @ P["W_h"].T + P["b_h"]))
    z = [None] + [h[t] @ P["W_hy"].T + P["b_y"] for t in range(1, L + 1)]  # 1-based logits
    dz = [None]
    for t in range(1, L + 1):
        p = np.exp(z[t] - z[t].max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        dz.append((p - Y[t - 1]) / B)
    zero_y = np.zeros((B, N_OUT))
    y_hat = [None] + [z[t] - alpha * dz[t] for t in range(1, L + 1)]
    hat = [None] * (L + 1)
    hat[L] = h[L] - alpha * dz[L] @ P["W_hy"]
    for t in range(L, 1, -1):
        if t in cut_back:  # a segment's last step: its ordinary step target
            hat[t - 1] = h[t - 1] - alpha * dz[t - 1] @ P["W_hy"]
            continue
        g_hat = G2(hat[t], y_hat[t - 1], X[t - 1], P)
        if credit == "dtp":
            hat[t - 1] = h[t - 1] + g_hat - G2(h[t], z[t - 1], X[t - 1], P)
        else:
            hat[t - 1] = g_hat
    grads = {k: np.zeros_like(v) for k, v in P.items()}
    recon = 0.0
    for t in range(1, L + 1):
        delta = (h[t] - hat[t]) * (1 - h[t] ** 2)
        grads["W_h"] += delta.T @ h[t - 1]
        grads["W_xh"] += delta.T @ X[t - 1]
        grads["b_h"] += delta.sum(0)
        grads["W_hy"] += alpha * dz[t].T @ h[t]
        grads["b_y"] += alpha * dz[t].sum(0)
        e = 0 if eps is None else eps[t - 1]
        hn = h[t - 1] + e
        f = np.tanh(X[t - 1] @ P["W_xh"].T + hn @ P["W_h"].T + P["b_h"])
        yn = zero_y if t == 1 else hn @ P["W_hy"].T + P["b_y"]  # the sibling at the corrupted input
        g = G2(f, yn, X[t - 1], P)
        if difference:  # 1/2 ||G2(f(h + eps)) - G2(f(h)) - eps||^2, through both terms
            g0 = G2(h[t], zero_y if t == 1 else z[t - 1], X[t - 1], P)
            r = g - g0 - e
            dg, dg0 = r * (1 - g ** 2), -r * (1 - g0 ** 2)
            grads["V_h"] += dg.T @ f + dg0.T @ h[t]
            grads["V_y"] += dg.T @ yn + dg0.T @ (zero_y if t == 1 else z[t - 1])
            grads["c_h"] += dg.sum(0) + dg0.sum(0)
            recon += 0.5 * np.sum(r ** 2)
            continue
        dg = (g - hn) * (1 - g ** 2)
        grads["V_h"] += dg.T @ f
        grads["V_y"] += dg.T @ yn
        grads["c_h"] += dg.sum(0)
        recon += 0.5 * np.sum((g - hn) ** 2)
    return h, hat, grads, recon


def _noise(eng):
    sid = eng.plan.where["h_1"][0]
    return eng.buf.stacks[sid].slots[1].noise


def _check(eng, hat, grads):
    for t in range(1, L + 1):
        np.testing.assert_allclose(eng.target(f"h_{t}"), hat[t], rtol=1e-10, atol=1e-12, err_msg=f"h_{t}")
    assert set(grads) == set(eng.grads)
    for k in grads:
        np.testing.assert_allclose(eng.grads[k], grads[k], rtol=1e-9, atol=1e-12, err_msg=k)


# ---------------------------------------------------------------------- 1. against the NumPy reference
@pytest.mark.parametrize("credit", ["dtp", "tp"])
def test_one_step_matches_numpy_reference_without_noise(credit):
    eng, P, x, y = _engine(credit=credit)
    eng.step(_batch(x, y), apply=False)
    h, hat, grads, recon = reference_joint(P, x, y, 1.5, credit=credit)
    _check(eng, hat, grads)
    np.testing.assert_allclose(sum(eng.reconstruction_losses().values()), recon, rtol=1e-10)
    # the joint inverse replaced the merge: h_{t-1} < L receives exactly one proposal (from h_t)
    assert set(eng.proposals("h_2")) == {"h_3"} and set(eng.proposals(f"h_{L}")) == {f"y_{L}"}
    with pytest.raises(GraphError, match="cut"):
        eng.proposal("h_2", "y_2")


@pytest.mark.parametrize("loss", ["reconstruction", "difference"])
def test_one_step_matches_numpy_reference_with_noise(loss):
    sigma = 0.3
    eng, P, x, y = _engine(noise=sigma, seed=4, inverse_loss=loss)
    eng.step(_batch(x, y), apply=False)
    noise = _noise(eng)
    np.testing.assert_array_equal(noise, np.random.default_rng(4).standard_normal((L, B, H)))  # the engine's draw
    h, hat, grads, recon = reference_joint(P, x, y, 1.5, eps=sigma * noise, difference=loss == "difference")
    _check(eng, hat, grads)
    np.testing.assert_allclose(sum(eng.reconstruction_losses().values()), recon, rtol=1e-10)


def test_differs_from_the_linear_merge_and_reduces_to_it_without_context():
    eng, P, x, y = _engine()
    eng.step(_batch(x, y), apply=False)
    plain = tp.Engine(tp.build_srn(L, N_IN, H, N_OUT, dtype="float64"), alpha=1.5, seed=3)
    for k in plain.params:
        plain.params[k] = P[k]
    plain.step(_batch(x, y), apply=False)
    np.testing.assert_allclose(eng.target(f"h_{L}"), plain.target(f"h_{L}"), rtol=1e-12)  # its step target
    assert not np.allclose(eng.target("h_1"), plain.target("h_1"))
    # G2 at h_1 reads no context (h_0 feeds only h_1): V_y's gradient has no term from t = 1
    _, _, g_all, _ = reference_joint(P, x, y, 1.5)
    assert np.abs(g_all["V_y"]).sum() > 0


def test_truncation_keeps_step_targets_at_segment_ends():
    eng, P, x, y = _engine(truncate=2)
    assert ("h_2", "y_2") not in eng.graph.cuts and ("h_1", "y_1") in eng.graph.cuts
    eng.step(_batch(x, y), apply=False)
    h, hat, grads, _ = reference_joint(P, x, y, 1.5, cut_back=(3, 5))
    _check(eng, hat, grads)


# ---------------------------------------------------------------------- 2. the chain scan, one node per stack
@pytest.mark.parametrize("credit", ["dtp", "tp"])
def test_chain_scan_agrees_with_one_node_per_stack(credit):
    outs = []
    for stacking in (True, False):
        eng, P, x, y = _engine(stacking=stacking, credit=credit)
        eng.step(_batch(x, y), apply=False)
        outs.append((np.stack([eng.target(f"h_{t}") for t in range(1, L + 1)]),
                     {k: v.copy() for k, v in eng.grads.items()}, eng.plan))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-10, atol=1e-12)
    for k in outs[0][1]:
        np.testing.assert_allclose(outs[0][1][k], outs[1][1][k], rtol=1e-9, atol=1e-12, err_msg=k)
    stacked, single = outs[0][2], outs[1][2]
    chains = [st for st in stacked.stacks if st.chain]
    assert len(chains) == 1 and chains[0].m == L and len(stacked.stacks) == 6  # the h chain stays one stack
    assert len(single.stacks) == len(single.where)
    ctx = chains[0].slots[1].context
    assert ctx.rows.tolist() == [-1, 0, 1, 2, 3] and ctx.group == "V_y" and ctx.weight == "W_hy"


def test_buffers_counted_and_float32_runs():
    eng, P, x, y = _engine(noise=0.2)
    for dtype in (np.float64, np.float32):
        assert buffer_bytes(eng.plan, B, dtype) == Buffers(eng.plan, B, dtype).nbytes
    plain = compile_plan(tp.build_srn(L, N_IN, H, N_OUT, noise=0.2))
    extra = buffer_bytes(eng.plan, B, np.float32)["float32"] - buffer_bytes(plain, B, np.float32)["float32"]
    assert extra == 4 * L * B * (2 * N_OUT + H)  # cy, cz, ogt per member
    from tpgraph.engine import plan_memory

    srn = tp.SRN(N_IN, H, N_OUT, inverse="joint", noise_sigma=0.2, truncate=3)
    for length in (7, 11):  # the SRN's extrapolated estimate counts the joint inverse's buffers
        assert srn.estimate_memory(length, B).buffers == plan_memory(compile_plan(srn.graph(length)), B).buffers
    g32 = tp.build_srn(L, N_IN, H, N_OUT, inverse="joint", noise=0.2)
    e32 = tp.Engine(g32, alpha=0.5, seed=1)
    res = e32.step({k: (v.astype(np.float32) if k == ("h_0",) else v) for k, v in _batch(x, y).items()})
    assert np.isfinite(res.loss)


def test_nonlinear_sibling_recomputed_at_the_corrupted_input():
    """A generic graph: the sibling is a tanh layer with a second input; its noisy value uses its pre-activation."""
    g = tp.Graph(dtype="float64")
    g.input("a", 3)
    g.input("c", 2)
    g.index_input("lab", 2)
    g.dense("u", ["a"], 4, weights=["Wu"], bias="bu")
    g.dense("v", ["u"], 4, weights=["Wv"], bias="bv", rules=["dtp"])
    g.dense("s", ["u", "c"], 3, weights=["Ws", "Wc"], bias="bs")
    g.add_inverse("v", of="u", weight="V", bias="cv", noise=0.4, context="Vs")
    g.dense("o", ["v", "s"], 2, act="identity", weights=["Wov", "Wos"])
    g.cut("u", "s")
    g.softmax_output("z", ["o"], 2, weights=["Wz"])
    g.cross_entropy("E", "z", "lab")
    eng = tp.Engine(g, alpha=1.0, seed=2)
    rng = np.random.default_rng(0)
    for k in eng.params:
        eng.params[k] = rng.normal(0, 0.5, eng.params[k].shape)
    P = {k: v.copy() for k, v in eng.params.items()}
    a, c = rng.normal(size=(B, 3)), rng.normal(size=(B, 2))
    eng.step({"a": a, "c": c, "lab": rng.integers(0, 2, B)}, apply=False)
    hu, hv, hs = eng.value("u"), eng.value("v"), eng.value("s")
    eps = 0.4 * eng.buf.stacks[eng.plan.where["v"][0]].slots[0].noise[0]
    hn = hu + eps
    fv = np.tanh(hn @ P["Wv"].T + P["bv"])
    fs = np.tanh(hn @ P["Ws"].T + c @ P["Wc"].T + P["bs"])
    gn = np.tanh(fv @ P["V"].T + fs @ P["Vs"].T + P["cv"])
    dg = (gn - hn) * (1 - gn ** 2)
    np.testing.assert_allclose(eng.grads["Vs"], dg.T @ fs, rtol=1e-10)
    np.testing.assert_allclose(eng.grads["V"], dg.T @ fv, rtol=1e-10)
    # the target of u: both consumers' targets through one inverse, nothing from s's own edge
    gi = lambda hv_, hs_: np.tanh(hv_ @ P["V"].T + hs_ @ P["Vs"].T + P["cv"])  # noqa: E731
    np.testing.assert_allclose(eng.target("u"), hu + gi(eng.target("v"), eng.target("s")) - gi(hv, hs),
                               rtol=1e-10, atol=1e-12)
    assert buffer_bytes(eng.plan, B, np.float64) == eng.buf.nbytes  # with the pre-activation buffer


# ---------------------------------------------------------------------- 3. finite differences for V_y
def test_reference_gradient_of_V_y_matches_finite_differences():
    eng, P, x, y = _engine(noise=0.3, seed=7)
    eps = 0.3 * np.random.default_rng(7).standard_normal((L, B, H))

    def recon(PP):
        return reference_joint(PP, x, y, 1.5, eps=eps)[3]

    grad = reference_joint(P, x, y, 1.5, eps=eps)[2]["V_y"]
    fd = central_differences(recon, P, "V_y")
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
    eng.step(_batch(x, y), apply=False)
    np.testing.assert_allclose(eng.grads["V_y"], fd, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------- 4. errors name the culprit
def _two_consumers():
    g = tp.Graph()
    g.input("a", 3)
    g.index_input("lab", 2)
    g.dense("u", ["a"], 4, weights=["Wu"])
    g.dense("v", ["u"], 4, weights=["Wv"], rules=["dtp"])
    return g


def test_graph_errors_name_node_and_group():
    g = _two_consumers()
    with pytest.raises(GraphError, match=r"inverse of node 'v'.*context group 'V' is also"):
        g.add_inverse("v", of="u", weight="V", context="V")
    with pytest.raises(GraphError, match=r"kind 'analytic' takes no context"):
        g.add_inverse("v", of="u", kind="analytic", context="Vs")
    with pytest.raises(GraphError, match="context must be a parameter group name"):
        g.add_inverse("v", of="u", weight="V", context=3)
    g.add_inverse("v", of="u", weight="V", context="Vs")
    g.softmax_output("z", ["v"], 2, weights=["Wz"])
    g.cross_entropy("E", "z", "lab")
    with pytest.raises(GraphError, match=r"'u' has no other consumer.*context_size"):
        g.validate()
    g.dense("s1", ["u"], 2, weights=["Ws1"])
    g.dense("s2", ["u"], 2, weights=["Ws2"])
    with pytest.raises(GraphError, match=r"inverse of node 'v' with respect to 'u'.*'u' feeds \['s1', 's2'\]"):
        g.validate()
    h = _two_consumers()
    h.add_inverse("v", of="u", weight="V", context="Vs", context_size=5)
    h.dense("s", ["u"], 2, weights=["Ws"])
    h.softmax_output("z", ["v"], 2, weights=["Wz"])
    h.cross_entropy("E", "z", "lab")
    with pytest.raises(GraphError, match=r"context 'Vs' reads 's' of shape \(2,\), but context_size is 5"):
        h.validate()
    k = _two_consumers()
    k.add_inverse("v", of="u", weight="V", context="Vs")
    k.activation("s", "u")
    k.softmax_output("z", ["v"], 2, weights=["Wz"])
    k.cross_entropy("E", "z", "lab")
    with pytest.raises(GraphError, match=r"other consumer 's' of 'u' is a activation node"):
        k.validate()


def test_context_group_clash_with_forward_group():
    g = _two_consumers()
    g.add_inverse("v", of="u", weight="V", context="Ws")
    g.dense("s", ["u"], 2, weights=["Ws"])
    g.softmax_output("z", ["v"], 2, weights=["Wz"])
    g.cross_entropy("E", "z", "lab")
    with pytest.raises(GraphError, match=r"'Ws'"):
        compile_plan(g)


def test_dtp_after_refused():
    g = tp.build_srn(3, N_IN, H, N_OUT, inverse="learned")
    g.add_inverse("h_2", of="h_1", weight="V_h", bias="c_h", context="V_y", context_size=N_OUT)
    g.set_rule("h_2", "h_1", "dtp_after")
    with pytest.raises(GraphError, match=r"inverse of node 'h_2' with respect to 'h_1'.*'dtp_after'"):
        g.validate()


@pytest.mark.parametrize("kw, match", [
    ({"credit": "fa"}, "credit 'fa'"),
    ({"credit": "dtp_after"}, "credit 'dtp_after'"),
    ({"merge": "mean"}, "merge 'mean'"),
    ({"many_to_many": False}, "many-to-one"),
])
def test_srn_refuses_unsupported_combinations(kw, match):
    with pytest.raises(ConfigError, match=f"inverse 'joint'.*{match}|{match}.*"):
        tp.build_srn(4, N_IN, H, N_OUT, inverse="joint", **kw)
    with pytest.raises(ConfigError, match="joint"):
        tp.SRN(N_IN, H, N_OUT, inverse="joint", **kw)


def test_config_key_and_refusals():
    from tpgraph.train.config import Config

    Config.from_dict({"method": {"inverse": "joint"}})
    Config.from_dict({"method": {"inverse": "joint", "name": "bptt", "merge": "mean"}})  # BPTT ignores it
    with pytest.raises(ConfigError, match="method.inverse = \"joint\".*method.credit = 'fa'"):
        Config.from_dict({"method": {"inverse": "joint", "credit": "fa"}})
    with pytest.raises(ConfigError, match="method.merge must be \"linear\""):
        Config.from_dict({"method": {"inverse": "joint", "merge": "mean"}})
    with pytest.raises(ConfigError, match="one of"):
        Config.from_dict({"method": {"inverse": "jiont"}})


def test_bptt_ignores_it_and_alignment_reference_restores_the_cuts():
    bptt = tp.SRN(N_IN, H, N_OUT, method="bptt", inverse="joint", dtype="float64", seed=1)
    plain = tp.SRN(N_IN, H, N_OUT, method="bptt", dtype="float64", seed=1)
    assert set(bptt.params) == set(plain.params) and not bptt.graph(4).cuts
    tpj = tp.SRN(N_IN, H, N_OUT, inverse="joint", dtype="float64", seed=1)
    tpl = tp.SRN(N_IN, H, N_OUT, dtype="float64", seed=1)
    for k in tpl.params:  # the same forward (and V_h, c_h) initialisation as the learned SRN of the seed
        np.testing.assert_array_equal(tpj.params[k], tpl.params[k])
    assert tpj.params["V_y"].shape == (H, N_OUT) and 0.05 < tpj.params["V_y"].std() < 0.2
    eng = tpj.engine(4)
    ref = reference_engine(eng)
    assert not ref.graph.cuts and eng.graph.cuts == {(f"h_{t}", f"y_{t}") for t in range(1, 4)}
    trunc = reference_engine(tp.SRN(N_IN, H, N_OUT, inverse="joint", truncate=2).engine(4))
    assert trunc.graph.cuts == {("h_2", "h_3")}  # truncation stays; the joint inverse's cuts go


# ---------------------------------------------------------------------- 5. a short training run, resumed
def test_trainer_run_checkpoint_and_resume(tmp_path):
    from tpgraph.train import Callback, Config, Trainer, apply_overrides

    def config(root):
        return apply_overrides(Config(), [
            "task.delay=2", "model.n_hidden=8", "method.inverse=joint", "method.noise_sigma=0.1",
            "protocol.n_batches=30", "protocol.warmup=6", "protocol.val_batches=2", "protocol.val_every=10",
            "output.checkpoint_every=10", "output.plots=false", f"output.runs_dir={root}", "output.name=run"])

    class StopAt(Callback):
        def on_batch(self, trainer, batch, loss):
            if batch == 15:
                trainer.request_stop("test stop")

    full = Trainer(config(tmp_path / "a"), tmp_path / "a" / "run")
    summary = full.run()
    assert summary["status"] == "completed" and np.isfinite(summary["final"]["val_loss"])
    assert "V_y" in full.model.params
    part = Trainer(config(tmp_path / "b"), tmp_path / "b" / "run", callbacks=[StopAt()])
    assert part.run()["status"] == "aborted"
    resumed = Trainer.resume(tmp_path / "b" / "run")
    assert resumed.run()["status"] == "completed"
    for k, v in full.model.params.items():
        assert resumed.model.params[k].tobytes() == v.tobytes(), k
