"""Truncated target propagation and truncated BPTT: cut credit edges (Graph.cut, SRN truncate=k).

References: a plain-NumPy DTP whose target chain restarts at every segment,
and finite differences of the truncated objective (each segment's losses with
the segment's incoming hidden state held fixed) for the gradient rules.
"""

import numpy as np
import pytest

import tpgraph as tp
from tpgraph.errors import ConfigError, GraphError
from tpgraph.merges import register_merge
from tpgraph.plan import compile_plan

from test_tp_reference import reference_step_targets, tanh_g

L, B, H, N_IN, N_OUT = 8, 3, 5, 4, 4


def _batch(x, y):
    return {("h_0",): np.zeros((1, x.shape[1], H)), tuple(f"x_{t}" for t in range(1, L + 1)): x,
            tuple(f"l_{t}" for t in range(1, L + 1)): y}


def _engine(k, credit="dtp", merge="linear", stacking=True, seed=3):
    g = tp.build_srn(L, N_IN, H, N_OUT, dtype="float64", credit=credit, merge=merge, truncate=k)
    eng = tp.Engine(compile_plan(g, stacking=stacking), alpha=0.7, seed=seed)
    rng = np.random.default_rng(seed)
    for name in eng.params:
        eng.params[name] = rng.normal(0, 0.5, eng.params[name].shape)
    x = rng.integers(0, N_IN, (L, B))
    y = rng.integers(0, N_OUT, (L, B))
    return eng, x, y


def _cut_before(t, k):
    """Is the edge h_{t-1} -> h_t cut (1-based t)?"""
    return k is not None and t > 1 and (t - 1) % k == 0


def reference_truncated_dtp(P, x, y, alpha, k):
    X, h, e = reference_step_targets(P, x, y, alpha, N_IN, N_OUT)
    hat = [None] * (L + 1)
    hat[L] = h[L] + e[L - 1]
    for t in range(L, 1, -1):
        if _cut_before(t, k):  # the chain restarts: h_{t-1} keeps only its step target
            hat[t - 1] = h[t - 1] + e[t - 2]
        else:
            hat[t - 1] = tanh_g(hat[t], X[t - 1], P) + (h[t - 1] - tanh_g(h[t], X[t - 1], P)) + e[t - 2]
    return h, hat


@pytest.mark.parametrize("k", [1, 3, 4, 7])
def test_truncated_dtp_matches_numpy_reference(k):
    eng, x, y = _engine(k)
    P = {n: v.copy() for n, v in eng.params.items()}
    eng.step(_batch(x, y), apply=False)
    h, hat = reference_truncated_dtp(P, x, y, 0.7, k)
    for t in range(1, L + 1):
        np.testing.assert_allclose(eng.target(f"h_{t}"), hat[t], rtol=1e-10, atol=1e-12)


def _segment_loss(P, x, y, k, h_start):
    """Sum over segments of the segment's cross-entropy, each segment started from ``h_start`` (held fixed)."""
    X = np.eye(N_IN)[x]
    total = 0.0
    h = np.zeros((B, H))
    for t in range(1, L + 1):
        if _cut_before(t, k):
            h = h_start[t - 1]  # the forward value, a constant of this segment
        h = np.tanh(X[t - 1] @ P["W_xh"].T + h @ P["W_h"].T + P["b_h"])
        zz = h @ P["W_hy"].T + P["b_y"]
        zz = zz - zz.max(1, keepdims=True)
        total += -(zz[np.arange(B), y[t - 1]] - np.log(np.exp(zz).sum(1))).mean()
    return total


@pytest.mark.parametrize("k", [2, 3])
def test_truncated_bptt_is_the_gradient_of_the_truncated_objective(k):
    eng, x, y = _engine(k, credit="gradient")
    eng.alpha = 1.0
    P = {n: v.copy() for n, v in eng.params.items()}
    eng.step(_batch(x, y), apply=False)
    h_start = [np.asarray(eng.value(f"h_{t}")) if t else np.zeros((B, H)) for t in range(L + 1)]
    for name in ("W_h", "W_xh", "b_h"):
        num = np.zeros_like(P[name])
        it = np.nditer(P[name], flags=["multi_index"])
        for _ in it:
            i = it.multi_index
            Q = {n: v.copy() for n, v in P.items()}
            Q[name][i] += 1e-6
            up = _segment_loss(Q, x, y, k, h_start)
            Q[name][i] -= 2e-6
            num[i] = (up - _segment_loss(Q, x, y, k, h_start)) / 2e-6
        np.testing.assert_allclose(eng.grads[name], num, rtol=1e-5, atol=1e-8)
    # and it is not the untruncated gradient
    full = _engine(None, credit="gradient")[0]  # the same seed: the same parameters
    full.alpha = 1.0
    full.step(_batch(x, y), apply=False)
    assert not np.allclose(full.grads["W_h"], eng.grads["W_h"])


register_merge("test_trunc_python_linear", lambda h, proposals: h + sum(p - h for p in proposals), overwrite=True)


@pytest.mark.parametrize("credit", ["dtp", "tp", "gradient"])
@pytest.mark.parametrize("merge", ["linear", "mean", "weighted_step", "test_trunc_python_linear", "clipped"])
def test_chain_scan_agrees_with_one_node_per_stack(credit, merge):
    outs = []
    for stacking in (True, False):
        eng, x, y = _engine(3, credit=credit, merge=merge, stacking=stacking)
        eng.step(_batch(x, y), apply=False)
        outs.append((np.stack([eng.displacement(f"h_{t}") for t in range(1, L + 1)]),
                     {n: g.copy() for n, g in eng.grads.items()}))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-10, atol=1e-13)
    for n in outs[0][1]:
        np.testing.assert_allclose(outs[0][1][n], outs[1][1][n], rtol=1e-10, atol=1e-13)


def test_truncating_beyond_the_length_changes_nothing():
    a, x, y = _engine(L)
    b, _, _ = _engine(None)
    a.step(_batch(x, y), apply=False)
    b.step(_batch(x, y), apply=False)
    for t in range(1, L + 1):
        np.testing.assert_array_equal(a.target(f"h_{t}"), b.target(f"h_{t}"))


def test_cut_edges_report_no_proposal_and_count_for_no_merge():
    eng, x, y = _engine(4, merge="mean")
    eng.step(_batch(x, y), apply=False)
    with pytest.raises(GraphError, match="is cut"):
        eng.proposal("h_4", "h_5")
    assert set(eng.proposals("h_4")) == {"y_4"}  # only its step target
    assert set(eng.proposals("h_3")) == {"y_3", "h_4"}
    st = eng.plan.stacks[eng.plan.where["h_4"][0]]
    assert st.cut_members == (4,)


def test_cut_errors_name_the_edge_and_the_option():
    g = tp.build_srn(3, N_IN, H, N_OUT)
    with pytest.raises(GraphError, match="'h_3' -> 'h_1'"):
        g.cut("h_3", "h_1")
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ConfigError, match="truncate"):
            tp.build_srn(3, N_IN, H, N_OUT, truncate=bad)
    with pytest.raises(ConfigError, match="truncate"):
        tp.SRN(N_IN, H, N_OUT, truncate=0)


def test_cut_survives_with_rules_and_networkx_round_trip():
    g = tp.build_srn(6, N_IN, H, N_OUT, truncate=2)
    assert g.with_rules("gradient").cuts == g.cuts == {("h_2", "h_3"), ("h_4", "h_5")}
    g2 = tp.Graph.from_networkx(g.nx, dtype="float32")
    assert g2.cuts == g.cuts


def test_config_key_trains_truncated(tmp_path):
    from tpgraph.train.config import Config
    from tpgraph.train.trainer import Trainer

    cfg = Config.from_dict({"task": {"delay": 3}, "model": {"n_hidden": 8},
                            "method": {"truncate": 5},
                            "protocol": {"n_batches": 12, "warmup": 4, "val_every": 6, "val_batches": 2},
                            "output": {"runs_dir": str(tmp_path), "plots": False, "checkpoint_every": 0}})
    tr = Trainer(cfg)
    assert tr.model.truncate == 5
    summary = tr.run()
    assert summary["status"] == "completed"
    with pytest.raises(ConfigError, match="method.truncate"):
        Config.from_dict({"method": {"truncate": 0}})
