"""dtp_after: displacements merged after inversion (Roulet & Harchaoui), against a plain-NumPy SRN."""

import numpy as np
import pytest

import tpgraph as tp
from tpgraph.errors import GraphError
from tpgraph.plan import compile_plan
from tpgraph.rules import get_rule

from test_tp_reference import reference_step_targets, tanh_g

L, B, H, N_IN, N_OUT = 6, 3, 5, 4, 4


def _engine(credit="dtp_after", merge="linear", stacking=True, inverse="learned", seed=5):
    kw = {"inverse": inverse} if inverse != "learned" else {}
    g = tp.build_srn(L, N_IN, H, N_OUT, dtype="float64", credit=credit, merge=merge, **kw)
    eng = tp.Engine(compile_plan(g, stacking=stacking), alpha=2.0, seed=seed)
    rng = np.random.default_rng(seed)
    for name in eng.params:
        eng.params[name] = rng.normal(0, 0.6, eng.params[name].shape)
    x = rng.integers(0, N_IN, (L, B))
    y = rng.integers(0, N_OUT, (L, B))
    batch = {("h_0",): np.zeros((1, B, H)), tuple(f"x_{t}" for t in range(1, L + 1)): x,
             tuple(f"l_{t}" for t in range(1, L + 1)): y}
    return eng, x, y, batch


def reference_after(P, x, y, alpha):
    X, h, e = reference_step_targets(P, x, y, alpha, N_IN, N_OUT)
    hat = [None] * (L + 1)
    hat[L] = h[L] + e[L - 1]
    for t in range(L, 1, -1):
        g = lambda v: tanh_g(v, X[t - 1], P)  # noqa: E731 - the inverse of step t
        d_prop = hat[t] - h[t] - e[t - 1]  # what came back from h_{t+1} (zero at the last step)
        tau = h[t - 1] + (g(h[t] + d_prop) - g(h[t])) + (g(h[t] + e[t - 1]) - g(h[t]))
        hat[t - 1] = tau + e[t - 2]
    return hat


def test_chain_matches_numpy_reference_and_differs_from_dtp():
    eng, x, y, batch = _engine()
    P = {n: v.copy() for n, v in eng.params.items()}
    eng.step(batch, apply=False)
    hat = reference_after(P, x, y, 2.0)
    for t in range(1, L + 1):
        np.testing.assert_allclose(eng.target(f"h_{t}"), hat[t], rtol=1e-10, atol=1e-12)
    # each proposal is the whole tau (introspection sees what was merged)
    step_2 = eng.proposal("h_2", "y_2") - eng.value("h_2")
    np.testing.assert_allclose(eng.proposal("h_2", "h_3"), hat[2] - step_2, rtol=1e-10, atol=1e-12)
    before, *_ = _engine(credit="dtp")
    before.step(batch, apply=False)
    assert not np.allclose(before.target("h_1"), eng.target("h_1"))


@pytest.mark.parametrize("inverse", ["learned", "analytic"])
def test_chain_scan_agrees_with_one_node_per_stack(inverse):
    outs = []
    for stacking in (True, False):
        eng, x, y, batch = _engine(stacking=stacking, inverse=inverse)
        eng.step(batch, apply=False)
        outs.append((np.stack([eng.target(f"h_{t}") for t in range(1, L + 1)]),
                     {n: g.copy() for n, g in eng.grads.items()}))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-10, atol=1e-12)
    for n in outs[0][1]:
        np.testing.assert_allclose(outs[0][1][n], outs[1][1][n], rtol=1e-9, atol=1e-12)


def test_reference_of_the_rule():
    rule = get_rule("dtp_after")
    rng = np.random.default_rng(0)
    V = rng.normal(size=(3, 3))
    g = lambda v: np.tanh(v @ V.T)  # noqa: E731
    h_u, h_v, d1, d2 = (rng.normal(size=(2, 3)) for _ in range(4))
    tau = rule.reference(h_u, h_v, h_v + d1 + d2, inverse=g, parts=[d1, d2])
    np.testing.assert_allclose(tau, h_u + g(h_v + d1) - g(h_v) + g(h_v + d2) - g(h_v))
    np.testing.assert_allclose(rule.reference(h_u, h_v, h_v + d1, inverse=g),
                               get_rule("dtp").reference(h_u, h_v, h_v + d1, inverse=g))


@pytest.mark.parametrize("merge", ["mean", "clipped", "weighted_step"])
def test_needs_the_linear_merge(merge):
    eng, x, y, batch = _engine(merge=merge)
    with pytest.raises(GraphError, match="dtp_after.*linear merge"):
        eng.step(batch, apply=False)


def test_not_with_truncation():
    g = tp.build_srn(L, N_IN, H, N_OUT, credit="dtp_after", truncate=2)
    eng = tp.Engine(g)
    rng = np.random.default_rng(0)
    batch = {("h_0",): np.zeros((1, B, H), np.float32),
             tuple(f"x_{t}" for t in range(1, L + 1)): rng.integers(0, N_IN, (L, B)),
             tuple(f"l_{t}" for t in range(1, L + 1)): rng.integers(0, N_OUT, (L, B))}
    with pytest.raises(GraphError, match="cut edges"):
        eng.step(batch)


def test_config_and_a_short_run(tmp_path):
    from tpgraph.train.config import Config
    from tpgraph.train.trainer import Trainer

    cfg = Config.from_dict({"task": {"delay": 3}, "model": {"n_hidden": 8}, "method": {"credit": "dtp_after"},
                            "protocol": {"n_batches": 10, "warmup": 4, "val_every": 5, "val_batches": 2},
                            "output": {"runs_dir": str(tmp_path), "plots": False, "checkpoint_every": 0}})
    summary = Trainer(cfg).run()
    assert summary["status"] == "completed" and np.isfinite(summary["final"]["val_loss"])
