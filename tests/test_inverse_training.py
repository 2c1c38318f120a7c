"""Inverse-training variants: the difference reconstruction loss and several inverse steps per batch.

The difference reconstruction loss (Meulemans et al. 2020) of one dense node
``f(h) = tanh(W_x x + W h + b)`` with the inverse ``g(h_v) = tanh(V h_v + W_x x + c)``:

    L = 1/2 || g(f(h + eps)) - g(f(h)) - eps ||^2,   summed over the batch,

and its full gradient with respect to ``V`` and ``c`` (through both ``g``
terms), written here in plain NumPy from the formula and checked against
finite differences, then against the engine on an SRN with the noise the
engine drew.
"""

import numpy as np
import pytest
from numeric import central_differences

import tpgraph as tp
from tpgraph.errors import ConfigError, GraphError
from tpgraph.models.srn import SRN
from tpgraph.train import Config, Trainer, apply_overrides
from tpgraph.train.trainer import build_model, build_task, data_stream


# ---------------------------------------------------------------- the plain-NumPy reference
def drl_reference(V, c, W, a, b, h, eps, stop_gradient=False, ag=None):
    """Loss and ``(dV, dc)`` of the difference reconstruction loss for one dense node.

    ``a`` is the other inputs' contribution ``W_x x`` ``[B, n]`` to the forward
    node and ``ag`` (default ``a``, as in the SRN's ``G``) theirs to the
    inverse, ``h`` the input ``[B, n_u]``, ``eps`` its noise.
    ``stop_gradient``: treat ``g(f(h))`` as a constant (the variant *not* used).
    """
    ag = a if ag is None else ag
    f = np.tanh(h @ W.T + a + b)
    fn = np.tanh((h + eps) @ W.T + a + b)
    gf = np.tanh(f @ V.T + ag + c)
    gn = np.tanh(fn @ V.T + ag + c)
    r = gn - gf - eps
    loss = 0.5 * np.sum(r ** 2)
    dn = r * (1 - gn ** 2)
    df = -r * (1 - gf ** 2)
    if stop_gradient:
        df = np.zeros_like(df)
    return loss, dn.T @ fn + df.T @ f, dn.sum(0) + df.sum(0)


def reconstruction_reference(V, c, W, a, b, h, eps):
    """The existing denoising loss's gradient, ``1/2 ||g(f(h + eps)) - (h + eps)||^2``, for contrast."""
    fn = np.tanh((h + eps) @ W.T + a + b)
    gn = np.tanh(fn @ V.T + a + c)
    dn = (gn - h - eps) * (1 - gn ** 2)
    return dn.T @ fn, dn.sum(0)


def _problem(seed=0, B=4, n=5, nu=5):
    rng = np.random.default_rng(seed)
    return dict(V=rng.normal(0, 0.6, (nu, n)), c=rng.normal(0, 0.2, nu), W=rng.normal(0, 0.6, (n, nu)),
                a=rng.normal(0, 0.5, (B, n)), b=rng.normal(0, 0.2, n), h=rng.uniform(-0.9, 0.9, (B, nu)),
                eps=0.3 * rng.standard_normal((B, nu)))


def test_reference_gradient_matches_central_differences():
    P = _problem()
    _, dV, dc = drl_reference(**P)
    for name, grad in (("V", dV), ("c", dc)):
        num = central_differences(lambda Q: drl_reference(**Q)[0], P, name)
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-9, err_msg=name)
    # the check can fail: the stop-gradient variant is not the derivative of the loss
    _, sV, _ = drl_reference(**P, stop_gradient=True)
    assert not np.allclose(sV, dV, rtol=1e-3)


def test_difference_loss_is_zero_without_noise_and_zero_for_an_exact_inverse():
    P = _problem(1)
    assert drl_reference(**dict(P, eps=np.zeros_like(P["eps"])))[0] == 0.0
    # for a linear f and its exact linear inverse (identity activations) the loss vanishes for any noise
    rng = np.random.default_rng(3)
    W = rng.normal(size=(4, 4)) + 4 * np.eye(4)
    h, eps = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    V = np.linalg.inv(W)
    r = (h + eps) @ W.T @ V.T - h @ W.T @ V.T - eps
    assert np.abs(r).max() < 1e-12


# ---------------------------------------------------------------- the engine against the reference
L, B, H, N_IN, N_OUT, SIGMA, SEED = 4, 3, 5, 4, 3, 0.3, 7


def _srn_step(dtype="float64", inverse_loss="difference", seed=SEED):
    model = SRN(N_IN, H, N_OUT, dtype=dtype, seed=seed, noise_sigma=SIGMA, inverse_loss=inverse_loss,
                lr_g=1e-2, fast_tanh=False)
    rng = np.random.default_rng(seed + 100)
    for k in model.params:  # random weights, not the init (orthogonal V_h, zero biases)
        model.params[k] = rng.normal(0, 0.5, model.params[k].shape).astype(dtype)
    P = {k: model.params[k].astype(np.float64) for k in model.params}
    x = rng.integers(0, N_IN, (L, B))
    y = rng.integers(0, N_OUT, (L, B))
    model.train_step(x, y, update_forward=False)
    return model, model.engine(L), P, x


def _srn_reference(P, x, noise, fn=drl_reference):
    X = np.eye(N_IN)[x]
    h = np.zeros((B, H))
    dV, dc, losses = np.zeros_like(P["V_h"]), np.zeros_like(P["c_h"]), []
    for t in range(L):
        a = X[t] @ P["W_xh"].T
        out = fn(P["V_h"], P["c_h"], P["W_h"], a, P["b_h"], h, SIGMA * noise[t])
        if fn is drl_reference:
            losses.append(out[0])
            out = out[1:]
        dV += out[0]
        dc += out[1]
        h = np.tanh(a + h @ P["W_h"].T + P["b_h"])
    return dV, dc, losses


def test_engine_difference_loss_gradient_matches_reference():
    model, eng, P, x = _srn_step()
    noise = np.random.default_rng(SEED).standard_normal((L, B, H))  # the engine's draw, reproduced
    sid, _ = eng.plan.where["h_1"]
    np.testing.assert_array_equal(eng.buf.stacks[sid].slots[1].noise, noise)  # ... and read back
    dV, dc, losses = _srn_reference(P, x, noise)
    np.testing.assert_allclose(eng.grads["V_h"], dV, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(eng.grads["c_h"], dc, rtol=1e-10, atol=1e-12)
    # the reported loss is the one optimised, per (node, input)
    rec = eng.reconstruction_losses()
    for t in range(1, L + 1):
        assert rec[(f"h_{t}", f"h_{t - 1}")] == pytest.approx(losses[t - 1], rel=1e-12)
    assert model.reconstruction_loss() == pytest.approx(sum(losses) / B, rel=1e-12)
    # the comparison can fail: the old loss and the stop-gradient variant give other gradients
    rV, _, _ = _srn_reference(P, x, noise, fn=reconstruction_reference)
    sV, _, _ = _srn_reference(P, x, noise, fn=lambda *a: drl_reference(*a, stop_gradient=True)[1:])
    for other in (rV, sV):
        assert np.abs(other - dV).max() > 1e-3 * np.abs(dV).max()
    # the step moved only the inverse
    for k in ("W_xh", "W_h", "b_h", "W_hy", "b_y"):
        np.testing.assert_array_equal(model.params[k], P[k])
    assert not np.array_equal(model.params["V_h"], P["V_h"])


def test_engine_difference_loss_float32():
    _, eng, P, x = _srn_step(dtype="float32")
    noise = np.random.default_rng(SEED).standard_normal((L, B, H), dtype=np.float32).astype(np.float64)
    dV, dc, _ = _srn_reference(P, x, noise)
    np.testing.assert_allclose(eng.grads["V_h"], dV, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(eng.grads["c_h"], dc, rtol=1e-4, atol=1e-5)


def test_reconstruction_stays_the_default_bit_for_bit():
    a, ea, _, _ = _srn_step(inverse_loss="reconstruction")
    model = SRN(N_IN, H, N_OUT, dtype="float64", seed=SEED, noise_sigma=SIGMA, lr_g=1e-2, fast_tanh=False)
    rng = np.random.default_rng(SEED + 100)
    for k in model.params:
        model.params[k] = rng.normal(0, 0.5, model.params[k].shape)
    x, y = rng.integers(0, N_IN, (L, B)), rng.integers(0, N_OUT, (L, B))
    model.train_step(x, y, update_forward=False)
    for k in ("V_h", "c_h"):
        np.testing.assert_array_equal(model.engine(L).grads[k], ea.grads[k])
        np.testing.assert_array_equal(model.params[k], a.params[k])


def test_difference_loss_on_a_plain_graph_without_others():
    """One dense node, an inverse with others='none' and no bias, not a chain: the other code path."""
    g = tp.Graph("one", dtype="float64")
    g.input("u", 4)
    g.dense("p", ["u"], 4, act="tanh", weights=["Wp"], bias="bp")
    g.dense("v", ["p"], 5, act="tanh", weights=["W"], bias="b", rules=["dtp"])
    g.add_inverse("v", of="p", weight="V", bias=None, others="none", noise=0.4, loss="difference")
    g.input("t", 5)
    g.mse("M", "v", "t")
    eng = tp.Engine(g, seed=5, alpha=0.5)
    rng = np.random.default_rng(9)
    for k in eng.params:
        eng.params[k] = rng.normal(0, 0.5, eng.params[k].shape)
    P = {k: v.copy() for k, v in eng.params.items()}
    batch = {"u": rng.normal(size=(6, 4)), "t": rng.normal(size=(6, 5))}
    eng.step(batch, update_forward=False, apply=False)
    noise = np.random.default_rng(5).standard_normal((1, 6, 4))[0]
    hp = np.tanh(batch["u"] @ P["Wp"].T + P["bp"])
    _, dV, _ = drl_reference(P["V"], np.zeros(4), P["W"], np.zeros((6, 5)), P["b"], hp, 0.4 * noise,
                             ag=np.zeros((6, 4)))
    np.testing.assert_allclose(eng.grads["V"], dV, rtol=1e-10, atol=1e-12)


def test_buffers_only_for_inverses_that_use_the_loss():
    from tpgraph.buffers import Buffers, buffer_bytes

    for loss, has in (("reconstruction", False), ("difference", True)):
        plan = tp.Engine(tp.build_srn(3, N_IN, H, N_OUT, noise=0.2, inverse_loss=loss)).plan
        buf = Buffers(plan, 4, plan.graph.dtype)
        assert buf.nbytes == buffer_bytes(plan, 4, plan.graph.dtype)
        sid, _ = plan.where["h_1"]
        assert (buf.stacks[sid].slots[1].dgf is not None) == has


# ---------------------------------------------------------------- refusing what makes no sense
def test_difference_without_noise_is_refused():
    g = tp.Graph()
    g.input("x", 2)
    g.dense("a", ["x"], 3, weights=["W1"])
    g.dense("b", ["a"], 3, weights=["W2"], rules=["dtp"])
    with pytest.raises(GraphError, match="noise"):
        g.add_inverse("b", of="a", weight="V", loss="difference")
    with pytest.raises(GraphError, match="unknown inverse loss"):
        g.add_inverse("b", of="a", weight="V", noise=0.1, loss="bogus")
    g.add_inverse("b", of="a", weight="V", noise=0.1, loss="difference")
    assert g.node("b").inverses["a"].loss == "difference"
    with pytest.raises(ConfigError, match="noise_sigma"):
        SRN(3, 4, 3, inverse_loss="difference")
    with pytest.raises(ConfigError, match="inverse_loss"):
        SRN(3, 4, 3, noise_sigma=0.1, inverse_loss="bogus")
    with pytest.raises(ConfigError, match=r"method\.inverse_loss.*method\.noise_sigma"):
        Config.from_dict({"method": {"inverse_loss": "difference"}})
    cfg = Config.from_dict({"method": {"inverse_loss": "difference", "noise_sigma": 0.1}})
    assert build_model(cfg, build_task(cfg)).inverse_loss == "difference"
    with pytest.raises(ConfigError, match="protocol.inverse_steps"):
        Config.from_dict({"protocol": {"inverse_steps": 0}})


def test_the_inverse_loss_survives_networkx_round_trips():
    g = tp.build_srn(2, 3, 4, 3, noise=0.1, inverse_loss="difference")
    again = tp.Graph.from_networkx(g.nx, dtype="float32")
    assert again.node("h_2").inverses["h_1"].loss == "difference"


# ---------------------------------------------------------------- several inverse steps per batch
def _cfg(*extra):
    sets = ["task.delay=2", "model.n_hidden=8", "protocol.n_batches=9", "protocol.warmup=3",
            "protocol.val_batches=2", "protocol.val_every=100", "output.plots=false",
            "method.noise_sigma=0.1"]
    return apply_overrides(Config(), [*sets, *extra])


def test_inverse_steps_counts_adam_steps():
    one, three = Trainer(_cfg()), Trainer(_cfg("protocol.inverse_steps=3"))
    one.run()
    three.run()
    s1, s3 = one.model.optimizer_state(), three.model.optimizer_state()
    for g in ("V_h", "c_h"):
        assert s1[g]["t"] == 9 and s3[g]["t"] == 27  # 3 inverse updates per batch, warm-up batches too
    for g in ("W_xh", "W_h", "b_h", "W_hy", "b_y"):
        assert s1[g]["t"] == s3[g]["t"] == 6
    assert not np.array_equal(one.model.params["V_h"], three.model.params["V_h"])


def test_inverse_steps_equals_a_manual_loop():
    cfg = _cfg("protocol.inverse_steps=3")
    t = Trainer(cfg)
    t.run()
    model, task = build_model(cfg, build_task(cfg)), build_task(cfg)
    rng = data_stream(cfg.protocol.seed)
    for batch in range(cfg.protocol.n_batches):
        x, y = task.batch(rng, cfg.protocol.batch_size)
        model.train_step(x, y, update_forward=batch >= cfg.protocol.warmup)
        for _ in range(2):
            model.train_step(x, y, update_forward=False)
    for k in model.params:
        np.testing.assert_array_equal(t.model.params[k], model.params[k], err_msg=k)


def test_bptt_ignores_inverse_steps():
    a = Trainer(_cfg("method.name=bptt"))
    b = Trainer(_cfg("method.name=bptt", "protocol.inverse_steps=3"))
    assert b.inverse_steps == 1
    a.run()
    b.run()
    for k in a.model.params:
        np.testing.assert_array_equal(a.model.params[k], b.model.params[k])
