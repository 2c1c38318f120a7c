"""The inverse-kind registry and the analytic regularised inverse of a tanh layer (Roulet & Harchaoui).

References here are plain NumPy, written from the formula
``g(h) = (W_u^T W_u + r I)^-1 W_u^T (atanh(clip(h)) - sum_{i != u} W_i h_i - b)``,
independently of :mod:`tpgraph.inverses`; the direct check solves the stacked
least-squares system with ``np.linalg.lstsq``.
"""

import math
import tomllib

import numpy as np
import pytest

from tpgraph import Engine, Graph
from tpgraph.buffers import Buffers, buffer_bytes
from tpgraph.errors import ConfigError, GraphError
from tpgraph.inverses import (AnalyticInverse, InverseKind, analytic_matrix, get_inverse_kind,
                              known_inverse_kinds, register_inverse_kind)
from tpgraph.models.srn import SRN, build_srn
from tpgraph.nodes import Dense, Inverse
from tpgraph.plan import compile_plan
from tpgraph.train import Config, Trainer, apply_overrides
from tpgraph.train.config import to_toml

L, N_IN, N_H, N_OUT, B = 5, 4, 6, 4, 3


def _batch(rng, length=L, B=B):
    x = rng.integers(0, N_IN, (length, B))
    y = rng.integers(0, N_OUT, (length, B))
    return {("h_0",): np.zeros((1, B, N_H)), tuple(f"x_{t}" for t in range(1, length + 1)): x,
            tuple(f"l_{t}" for t in range(1, length + 1)): y}, x


def _g(h, W, others, b, r, clip=1e-3):
    """The analytic inverse from its formula: an explicit inverse of the regularised normal matrix."""
    lim = 1.0 - clip
    z = np.arctanh(np.clip(h, -lim, lim)) - others - b
    M = np.linalg.inv(W.T @ W + r * np.eye(W.shape[1])) @ W.T
    return z @ M.T


def _srn_engine(credit, reg=0.1, merge="linear", blas="auto", stacking=True, seed=0, length=L):
    g = build_srn(length, N_IN, N_H, N_OUT, credit=credit, dtype="float64", merge=merge, inverse="analytic",
                  inverse_reg=reg)
    plan = compile_plan(g, stacking=stacking)
    # a random, non-orthogonal W_h: the regularisation then matters in every direction
    params = g.init_params(seed)
    rng = np.random.default_rng(seed + 1)
    params["W_h"] = 0.6 * rng.standard_normal((N_H, N_H))
    params["W_xh"] = 0.5 * rng.standard_normal((N_H, N_IN))
    params["b_h"] = 0.1 * rng.standard_normal(N_H)
    return Engine(plan, params, alpha=0.5, lr=0.05, blas=blas, seed=seed)


# ---------------------------------------------------------------------- (1) proposals against NumPy
@pytest.mark.parametrize("credit", ["dtp", "tp"])
def test_srn_proposals_match_numpy_reference(credit):
    reg = 0.3
    eng = _srn_engine(credit, reg=reg)
    rng = np.random.default_rng(5)
    batch, x = _batch(rng)
    before = {k: eng.params[k].copy() for k in eng.params}
    eng.step(batch)  # applies the update: the proposals used the weights of `before`
    assert not np.allclose(eng.params["W_h"], before["W_h"])
    W, Wx, b = before["W_h"], before["W_xh"], before["b_h"]
    recon = eng.reconstruction_losses()
    for t in range(2, L + 1):
        others = Wx[:, x[t - 1]].T  # one-hot x_t through W_xh
        h_t, h_prev = eng.value(f"h_{t}"), eng.value(f"h_{t - 1}")
        h_hat = eng.target(f"h_{t}")
        g_hat, g_fwd = _g(h_hat, W, others, b, reg), _g(h_t, W, others, b, reg)
        want = h_prev + g_hat - g_fwd if credit == "dtp" else g_hat
        np.testing.assert_allclose(eng.proposal(f"h_{t - 1}", f"h_{t}"), want, rtol=1e-9, atol=1e-11)
        # the reported reconstruction loss: 1/2 ||g(h_t) - h_{t-1}||^2 summed over the batch
        assert recon[(f"h_{t}", f"h_{t - 1}")] == pytest.approx(0.5 * np.sum((g_fwd - h_prev) ** 2), rel=1e-9)
        # the linear merge: h_{t-1} takes its step target's and h_t's displacements
        step = eng.proposal(f"h_{t - 1}", f"y_{t - 1}") - h_prev
        np.testing.assert_allclose(eng.target(f"h_{t - 1}"), want + step, rtol=1e-9, atol=1e-11)


def test_matrix_is_rebuilt_from_the_live_weight_every_step():
    eng = _srn_engine("dtp")
    rng = np.random.default_rng(2)
    for _ in range(3):
        batch, _ = _batch(rng)
        W = eng.params["W_h"].copy()
        eng.step(batch)
        mt = eng.inverse_mats[("analytic", "W_h", 0.1)]
        want = np.linalg.solve(W.T @ W + 0.1 * np.eye(N_H), W.T).T
        np.testing.assert_allclose(mt, want, rtol=1e-10, atol=1e-12)
    # the weight moved, so the matrix of the next step differs from this one
    assert not np.allclose(eng.params["W_h"], W)


def test_analytic_srn_has_no_inverse_groups_and_shares_the_forward_init():
    learned, analytic = SRN(N_IN, N_H, N_OUT, seed=3), SRN(N_IN, N_H, N_OUT, seed=3, inverse="analytic")
    assert set(learned.params) - set(analytic.params) == {"V_h", "c_h"}
    for k in analytic.params:
        np.testing.assert_array_equal(analytic.params[k], learned.params[k])
    assert learned.trains_inverse and not analytic.trains_inverse
    assert math.isnan(analytic.spectral_radius("V_h"))
    rng = np.random.default_rng(0)
    _, x = _batch(rng)
    y = rng.integers(0, N_OUT, x.shape)
    loss = analytic.train_step(x, y)
    assert np.isfinite(loss)
    assert "V_h" not in analytic.engine(L).optimizers
    assert np.isfinite(analytic.reconstruction_loss())


# ---------------------------------------------------------------------- (2) against a direct solve
@pytest.mark.parametrize("n_v,n_u", [(6, 6), (7, 4), (3, 5)])
def test_reference_is_the_regularised_least_squares_solution(n_v, n_u):
    rng = np.random.default_rng(n_v * 10 + n_u)
    r = 0.25
    W = rng.standard_normal((n_v, n_u))
    h = np.tanh(rng.standard_normal((8, n_v)))
    others, b = rng.standard_normal((8, n_v)), rng.standard_normal(n_v)
    inv = Inverse(of="u", kind="analytic", reg=r)
    got = get_inverse_kind("analytic").reference(inv, h, others=others, weight=W, bias=b)
    A = np.vstack([W, math.sqrt(r) * np.eye(n_u)])
    for i in range(h.shape[0]):
        rhs = np.concatenate([np.arctanh(h[i]) - others[i] - b, np.zeros(n_u)])
        x, *_ = np.linalg.lstsq(A, rhs, rcond=None)
        np.testing.assert_allclose(got[i], x, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(analytic_matrix(W, r), np.linalg.lstsq(A, np.vstack([np.eye(n_v), np.zeros((n_u, n_v))]),
                                                                      rcond=None)[0], rtol=1e-9, atol=1e-11)


def _two_input_graph(credit, n_u=4, n_x=3, n_v=7, others="forward"):
    """u = tanh(W_a a + b_u) (a hidden node), v = tanh(W_u u + W_x x + b_v) with an analytic inverse w.r.t. u."""
    g = Graph("two", dtype="float64")
    g.input("a", 5)
    g.input("x", n_x)
    g.input("target", 2)
    g.dense("u", ["a"], n_u, act="tanh", weights=["W_a"], bias="b_u")
    g.dense("v", ["u", "x"], n_v, act="tanh", weights=["W_u", "W_x"], bias="b_v", rules=[credit, "none"])
    g.add_inverse("v", of="u", kind="analytic", reg=0.2, others=others)
    g.dense("y", ["v"], 2, act="identity", weights=["W_y"], bias="b_y")
    g.mse("E", "y", "target")
    for group in ("b_u", "b_v", "b_y"):
        g.init(group, "normal:0.3")
    return g


@pytest.mark.parametrize("credit", ["dtp", "tp"])
@pytest.mark.parametrize("others", ["forward", "none"])
def test_batched_proposal_of_a_non_square_layer_against_a_direct_solve(credit, others):
    g = _two_input_graph(credit, others=others)
    eng = Engine(g, alpha=1.0, lr=0.1, seed=1)
    rng = np.random.default_rng(4)
    batch = {"a": rng.standard_normal((6, 5)), "x": rng.standard_normal((6, 3)),
             "target": 2 * rng.standard_normal((6, 2))}
    W, Wx, bv = (eng.params[k].copy() for k in ("W_u", "W_x", "b_v"))
    eng.step(batch, apply=False)
    h_u, h_v, h_hat = eng.value("u"), eng.value("v"), eng.target("v")
    assert not np.allclose(h_hat, h_v)
    rest = (batch["x"] @ Wx.T if others == "forward" else 0.0) + bv
    A = np.vstack([W, math.sqrt(0.2) * np.eye(4)])

    def solve(h):
        rhs = np.arctanh(np.clip(h, -0.999, 0.999)) - rest
        return np.linalg.lstsq(A, np.hstack([rhs, np.zeros((len(h), 4))]).T, rcond=None)[0].T

    want = h_u + solve(h_hat) - solve(h_v) if credit == "dtp" else solve(h_hat)
    np.testing.assert_allclose(eng.proposal("u", "v"), want, rtol=1e-9, atol=1e-11)
    # the buffers' estimate follows the analytic inverse's own widths
    assert buffer_bytes(eng.plan, 6, g.dtype) == Buffers(eng.plan, 6, g.dtype).nbytes


def test_clip_keeps_saturated_targets_finite():
    g = _two_input_graph("tp")
    eng = Engine(g, alpha=1e3, lr=0.1, seed=0)  # a huge step: targets far outside (-1, 1)
    rng = np.random.default_rng(0)
    batch = {"a": rng.standard_normal((4, 5)), "x": rng.standard_normal((4, 3)),
             "target": 50 * rng.standard_normal((4, 2))}
    eng.step(batch, apply=False)
    assert np.abs(eng.target("v")).max() > 1
    p = eng.proposal("u", "v")
    assert np.all(np.isfinite(p))
    W, Wx, bv = eng.params["W_u"], eng.params["W_x"], eng.params["b_v"]
    np.testing.assert_allclose(p, _g(eng.target("v"), W, batch["x"] @ Wx.T, bv, 0.2), rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------------- (3) the chain scan against single stacks
@pytest.mark.parametrize("credit", ["dtp", "tp"])
@pytest.mark.parametrize("merge", ["linear", "mean", "clipped"])
@pytest.mark.parametrize("blas", ["auto", "numba"])
def test_chain_scan_matches_unstacked_plan(credit, merge, blas):
    scan = _srn_engine(credit, merge=merge, blas=blas)
    flat = _srn_engine(credit, merge=merge, blas=blas, stacking=False)
    assert any(st.chain for st in scan.plan.stacks) and not any(st.chain for st in flat.plan.stacks)
    rng = np.random.default_rng(11)
    for _ in range(3):  # a few steps: the weights move and the matrices with them
        batch, _ = _batch(rng)
        a, b = scan.step(batch), flat.step(batch)
        assert a.loss == pytest.approx(b.loss, rel=1e-12)
        for t in range(1, L + 1):
            np.testing.assert_allclose(scan.target(f"h_{t}"), flat.target(f"h_{t}"), rtol=1e-10, atol=1e-12)
            if t > 1:
                np.testing.assert_allclose(scan.proposal(f"h_{t - 1}", f"h_{t}"),
                                           flat.proposal(f"h_{t - 1}", f"h_{t}"), rtol=1e-10, atol=1e-12)
        for k in scan.params:
            np.testing.assert_allclose(scan.params[k], flat.params[k], rtol=1e-10, atol=1e-12)
    ra, rb = scan.reconstruction_losses(), flat.reconstruction_losses()
    assert ra.keys() == rb.keys() and all(ra[k] == pytest.approx(rb[k], rel=1e-10) for k in ra)


def test_python_merge_runs_the_scan_member_by_member():
    def linear(h, proposals):
        return h + sum(p - h for p in proposals)

    from tpgraph.merges import register_merge
    register_merge("inverses_test_linear", linear, overwrite=True)
    a, b = _srn_engine("dtp"), _srn_engine("dtp", merge="inverses_test_linear")
    batch, _ = _batch(np.random.default_rng(3))
    a.step(batch)
    b.step(batch)
    for t in range(1, L + 1):
        np.testing.assert_allclose(a.target(f"h_{t}"), b.target(f"h_{t}"), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------- (4) refusals
def _one_node(act="tanh"):
    g = Graph("one", dtype="float64")
    g.input("a", 3)
    g.dense("u", ["a"], 4, act="tanh", weights=["W_a"])
    g.dense("v_node", ["u"], 4, act=act, weights=["W_v"], rules=["dtp"])
    return g


@pytest.mark.parametrize("act", ["sigmoid", "relu", "identity"])
def test_refuses_a_non_tanh_node(act):
    g = _one_node(act)
    with pytest.raises(GraphError, match=r"v_node.*tanh|tanh.*v_node") as exc:
        g.add_inverse("v_node", of="u", kind="analytic")
    assert act in str(exc.value)
    # declared behind add_inverse's back: validation refuses it too, naming the node
    g.nx.nodes["v_node"]["node"].inverses["u"] = Inverse(of="u", kind="analytic")
    g.mse("E", "v_node", "u")
    with pytest.raises(GraphError, match="v_node"):
        g.validate()
    with pytest.raises(GraphError, match="'h_1'.*act 'relu'"):
        build_srn(3, 2, 4, 2, act="relu", inverse="analytic")


@pytest.mark.parametrize("reg", [0, -0.5, float("nan"), float("inf"), "0.1", True])
def test_refuses_a_bad_reg(reg):
    with pytest.raises(GraphError, match=r"'v_node'.*reg") as exc:
        _one_node().add_inverse("v_node", of="u", kind="analytic", reg=reg)
    assert "> 0" in str(exc.value)
    with pytest.raises(ConfigError, match="inverse_reg"):
        SRN(3, 4, 3, inverse="analytic", inverse_reg=reg)


def test_refuses_a_bad_clip_parameters_and_noise():
    g = _one_node()
    with pytest.raises(GraphError, match=r"'v_node'.*clip"):
        g.add_inverse("v_node", of="u", kind="analytic", clip=1.5)
    with pytest.raises(GraphError, match=r"'v_node'.*no parameter groups"):
        g.add_inverse("v_node", of="u", kind="analytic", weight="V")
    with pytest.raises(GraphError, match=r"'v_node'.*noise"):
        g.add_inverse("v_node", of="u", kind="analytic", noise=0.1)
    with pytest.raises(GraphError, match="weight and bias must be group names"):
        g.add_inverse("v_node", of="u")  # a learned inverse needs its groups


def test_refuses_an_unknown_kind():
    with pytest.raises(GraphError, match=r"'v_node'.*unknown inverse kind 'exact'.*learned, analytic"):
        _one_node().add_inverse("v_node", of="u", kind="exact")
    with pytest.raises(ConfigError, match="inverse"):
        SRN(3, 4, 3, inverse="exact")
    with pytest.raises(ConfigError, match=r"method\.inverse\b"):
        Config.from_dict({"method": {"inverse": "exact"}})
    with pytest.raises(ConfigError, match=r"method\.inverse_reg"):
        Config.from_dict({"method": {"inverse_reg": 0.0}})


def test_registry():
    assert known_inverse_kinds()[:2] == ["learned", "analytic"]
    assert isinstance(get_inverse_kind("analytic"), AnalyticInverse)
    with pytest.raises(GraphError, match="already registered"):
        register_inverse_kind(AnalyticInverse)
    with pytest.raises(GraphError, match="expects an InverseKind"):
        register_inverse_kind(object())
    assert issubclass(AnalyticInverse, InverseKind)


def test_from_networkx_and_settings_keep_the_kind():
    import networkx as nx

    d = nx.DiGraph()
    d.add_node("a", kind="input", size=3)
    d.add_node("u", kind="dense", inputs=("a",), size=4, weights=("W_a",))
    d.add_node("v", kind="dense", inputs=("u",), size=4, weights=("W_v",), rules=("tp",),
               inverses={"u": {"kind": "analytic", "reg": 0.5}})
    d.add_node("E", kind="mse", inputs=("v", "u"))
    g = Graph.from_networkx(d, dtype="float64")
    inv = g.node("v").inverses["u"]
    assert (inv.kind, inv.reg, inv.weight) == ("analytic", 0.5, None)
    assert "analytic" in repr(inv)
    assert g.param_shapes().keys() == {"W_a", "W_v"}
    # the kind enters the stacking signature: a learned and an analytic node never share a stack
    a = Dense("p", ("u",), size=4, weights=("W_v",), inverses={"u": Inverse(of="u", weight="V")})
    b = Dense("q", ("u",), size=4, weights=("W_v",), inverses={"u": Inverse(of="u", kind="analytic")})
    assert a.settings() != b.settings()


# ---------------------------------------------------------------------- (5) config and trainer
def test_config_round_trip():
    cfg = Config.from_dict({"method": {"inverse": "analytic", "inverse_reg": 0.3}})
    assert Config.from_dict(tomllib.loads(to_toml(cfg))) == cfg
    assert cfg.method.inverse == "analytic" and cfg.method.inverse_reg == 0.3
    assert not cfg.method.trains_inverse() and Config().method.trains_inverse()
    assert Config().method.inverse == "learned"
    # no inverse to train: a warm-up as long as the run is no error (as with fa)
    Config.from_dict({"method": {"inverse": "analytic"}, "protocol": {"warmup": 50, "n_batches": 50}})
    with pytest.raises(ConfigError, match="warmup"):
        Config.from_dict({"protocol": {"warmup": 50, "n_batches": 50}})


def _cfg(tmp_path, *extra):
    return apply_overrides(Config(), [
        "protocol.n_batches=30", "protocol.warmup=10", "protocol.val_batches=2", "protocol.val_every=10",
        "protocol.alignment_every=10", "protocol.max_spectral_radius=50", "model.n_hidden=8", "task.delay=2",
        "method.inverse=analytic", "method.inverse_reg=0.2", "output.checkpoint_every=10", "output.plots=false",
        f"output.runs_dir={tmp_path}", *extra])


def test_trainer_runs_with_the_analytic_inverse(tmp_path):
    cfg = _cfg(tmp_path, "output.name=full")
    tr = Trainer(cfg, tmp_path / "full")
    assert tr.warmup == 0 and tr.inverse_steps == 1
    summary = tr.run()
    assert summary["status"] == "completed" and summary["batches_done"] == 30
    rows = tr.state.rows
    assert all(np.isfinite(r["train_loss"]) for r in rows[1:])
    assert all(math.isnan(r["spectral_radius_V_h"]) for r in rows)
    assert all(np.isfinite(r["reconstruction_loss"]) and r["reconstruction_loss"] > 0 for r in rows[1:])
    assert all(np.isfinite(r["local_loss"]) for r in rows[1:])  # every batch trained the forward weights
    assert len(tr.alignment_rows) == 3 and all(np.isfinite(r["angle_W_h"]) for r in tr.alignment_rows)
    assert "V_h" not in tr.model.params
    text = (tmp_path / "full" / "metrics.csv").read_text()
    assert "spectral_radius_V_h" in text.splitlines()[0]

    # interrupted at batch 15 and resumed: the same weights as the uninterrupted run, bit for bit
    class Stop:
        def on_batch(self, trainer, batch, loss):
            if batch == 15:
                trainer.request_stop("test")

    from tpgraph.train.trainer import Callback

    stopper = type("Stopper", (Callback,), {"on_batch": Stop.on_batch})()
    part = Trainer(cfg, tmp_path / "part", callbacks=[stopper])
    assert part.run()["status"] == "aborted"
    resumed = Trainer.resume(tmp_path / "part")
    assert resumed.run()["status"] == "completed"
    for k in tr.model.params:
        np.testing.assert_array_equal(resumed.model.params[k], tr.model.params[k])


def test_learned_and_analytic_runs_differ_and_bptt_ignores_the_kind(tmp_path):
    base = ["protocol.n_batches=12", "protocol.warmup=4", "protocol.val_batches=1", "protocol.val_every=12",
            "model.n_hidden=6", "task.delay=2", "output.plots=false"]
    runs = {}
    for name, extra in (("learned", []), ("analytic", ["method.inverse=analytic"]),
                        ("bptt_l", ["method.name=bptt"]), ("bptt_a", ["method.name=bptt", "method.inverse=analytic"])):
        tr = Trainer(apply_overrides(Config(), base + extra))
        tr.run()
        runs[name] = tr.model.params
    assert not np.allclose(runs["learned"]["W_h"], runs["analytic"]["W_h"])
    np.testing.assert_array_equal(runs["bptt_l"]["W_h"], runs["bptt_a"]["W_h"])
