"""The examples run and do what they say."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_custom_graph_example_learns():
    mod = load("custom_graph")
    history = mod.main(steps=600, every=300, quiet=True)
    assert len(history) == 3
    assert history[-1] < 0.5 * history[0]


def test_custom_graph_merges_two_paths_at_h1():
    mod = load("custom_graph")
    g = mod.build_graph()
    import tpgraph as tp

    plan = tp.compile_plan(g)
    sid, k = plan.where["h1"]
    consumers = {plan.stacks[cs].members[ck] for cs, _, ck in plan.stacks[sid].incoming[k]}
    assert consumers == {"h2", "h3"}


# ---------------------------------------------------------------------- the stacked SRN
def test_stacked_srn_learns_copy_memory_below_the_baseline():
    mod = load("stacked_srn")
    history = mod.main(batches=500, every=250, quiet=True)
    assert len(history) == 3
    assert history[-1] < 0.5 * history[0]
    from tpgraph.tasks import make_task

    assert history[-1] < make_task("copy_memory", delay=2, n_memorise=3).baseline_loss


def test_stacked_srn_nodes_get_proposals_from_above_and_from_the_future():
    import numpy as np

    import tpgraph as tp

    mod = load("stacked_srn")
    g = mod.build_stacked_srn(4, 5, 6, 5)
    plan = tp.compile_plan(g)
    chains = [st for st in plan.stacks if st.node.kind == "dense"]
    assert [tuple(st.members) for st in chains] == [tuple(f"h1_{t}" for t in range(1, 5)),
                                                    tuple(f"h2_{t}" for t in range(1, 5))]
    eng = mod.make_engine(g, g.init_params(0), alpha=1.0, lr=1e-3, seed=0)
    rng = np.random.default_rng(0)
    zeros = np.zeros((1, 3, 6))
    eng.step({("h1_0",): zeros, ("h2_0",): zeros, tuple(f"x_{t}" for t in range(1, 5)): rng.integers(0, 5, (4, 3)),
              tuple(f"l_{t}" for t in range(1, 5)): rng.integers(0, 5, (4, 3))})
    assert set(eng.proposals("h1_2")) == {"h2_2", "h1_3"}      # from above and from the future
    assert set(eng.proposals("h2_2")) == {"y_2", "h2_3"}       # from its output and from the future
    assert set(eng.proposals("h1_4")) == {"h2_4"}              # the last step: from above only
    # the linear merge: the target's displacement is the sum of the proposals' displacements
    h = eng.value("h1_2")
    np.testing.assert_allclose(eng.target("h1_2") - h, sum(p - h for p in eng.proposals("h1_2").values()),
                               atol=1e-6)


# ---------------------------------------------------------------------- Lee et al.'s DTP network
def test_dtp_feedforward_learns_and_trains_its_hidden_layers():
    mod = load("dtp_feedforward")
    tp_hist = mod.main(steps=600, every=300, quiet=True)
    readout = mod.main(steps=600, every=300, method="readout", quiet=True)
    assert len(tp_hist) == 3 and tp_hist[0] == readout[0]  # the same initialisation
    assert tp_hist[-1] < 0.5 * tp_hist[0]
    # DTP's hidden layers learned: far better than training the output on the random hidden layers
    assert tp_hist[-1] < 0.6 * readout[-1]


def test_dtp_feedforward_graph_has_one_inverse_per_layer_above_the_first():
    mod = load("dtp_feedforward")
    g = mod.build_dtp_network(6, (8, 8, 8), 4)
    assert [g.node(f"h{i}").rules for i in (1, 2, 3)] == [("none",), ("dtp",), ("dtp",)]
    assert [sorted(g.node(f"h{i}").inverses) for i in (1, 2, 3)] == [[], ["h1"], ["h2"]]
    assert g.node("y").rules == ("gradient",)
    data = mod.GaussianMixture(seed=3)
    import numpy as np

    a, b = data.sample(np.random.default_rng(0), 5), data.sample(np.random.default_rng(0), 5)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].shape == (5, 6) and set(a[1].tolist()) <= {0, 1, 2, 3}


# ---------------------------------------------------------------------- the long-range tasks
@pytest.mark.parametrize("task", ["adding", "temporal_order"])
def test_long_range_srn_tp_and_bptt_learn_below_the_baseline(task):
    mod = load("long_range_srn")
    from tpgraph.tasks import make_task

    out = mod.main(task, length=10, batches=600, every=300, quiet=True)
    baseline = make_task(task, length=10).baseline_loss
    assert out["tp"][0] == out["bptt"][0]  # the same initialisation and validation set
    for method, history in out.items():
        assert history[-1]["loss"] < 0.5 * history[0]["loss"], (method, history)
        assert history[-1]["loss"] < 0.7 * baseline, (method, history)


# ---------------------------------------------------------------------- the gated recurrent cell
def test_gru_copy_memory_tp_and_bptt_lower_the_loss():
    mod = load("gru_copy_memory")
    out = mod.main(delay=2, n_memorise=3, batches=300, n_hidden=16, warmup=50, every=150, val_batches=2,
                   angles=True, quiet=True)
    assert out["tp"][0]["loss"] == out["bptt"][0]["loss"]  # the same initialisation and validation set
    for method, history in out.items():
        assert len(history) == 3, method
        assert history[-1]["loss"] < 0.6 * history[0]["loss"], (method, history)
    # TP's alignment with BPTT: the output layer follows the gradient exactly, the gates do not
    angles = out["tp"][-1]["angles"]
    assert angles["W_hy"] < 0.01
    assert all(0 <= angles[g] <= 180 for g in ("W_zh", "W_rh", "W_ch")) and angles["W_zh"] > 0.01
    assert "angles" not in out["bptt"][-1]


def test_gru_graph_uses_dtp_on_dense_edges_and_gradient_on_products():
    import numpy as np

    import tpgraph as tp

    mod = load("gru_copy_memory")
    g = mod.build_gru(3, 4, 5, 4, method="tp", dtype="float64")
    assert g.node("z_2").rules == ("none", "dtp") and sorted(g.node("z_2").inverses) == ["h_1"]
    assert g.node("c_2").rules == ("none", "dtp") and sorted(g.node("c_2").inverses) == ["rh_2"]
    assert g.node("u_2").kind == "multiply" and g.node("u_2").rules == ("gradient", "gradient")
    assert g.node("nh_2").kind == "scale" and g.node("nh_2").factor == -1.0
    # dtp on the candidate only: the gates' edges take the gradient rule and carry no inverse
    half = mod.build_gru(3, 4, 5, 4, method="tp", gates="gradient")
    assert half.node("z_2").rules == ("none", "gradient") and not half.node("r_2").inverses
    assert half.node("c_2").rules == ("none", "dtp") and sorted(half.node("c_2").inverses) == ["rh_2"]
    assert {k for k in half.param_shapes() if k.startswith("V_")} == {"V_c"}
    # h_t = (1 - z_t) h_{t-1} + z_t c_t
    eng = tp.Engine(g, alpha=1.0, seed=0)
    rng = np.random.default_rng(0)
    h0 = rng.normal(0, 0.5, (1, 2, 5))
    eng.forward({("h_0",): h0, ("x_1", "x_2", "x_3"): rng.integers(0, 4, (3, 2)),
                 ("l_1", "l_2", "l_3"): rng.integers(0, 4, (3, 2))})
    z, c = eng.value("z_1"), eng.value("c_1")
    np.testing.assert_allclose(eng.value("h_1"), (1 - z) * h0[0] + z * c, rtol=1e-12, atol=1e-14)
    # its backpropagation baseline has the same forward groups and matches finite differences
    bp = mod.build_gru(3, 4, 5, 4, method="bptt", dtype="float64")
    forward = sorted(k for k in g.param_shapes() if not k.startswith(("V_", "c_")))
    assert sorted(bp.param_shapes()) == forward
    from test_backprop import assert_gradients_match

    eng = tp.Engine(bp, alpha=0.7, seed=1)
    for k in forward:
        eng.params[k] = eng.params[k] + rng.normal(0, 0.3, eng.params[k].shape)
    assert_gradients_match(eng, {("h_0",): h0, ("x_1", "x_2", "x_3"): rng.integers(0, 4, (3, 2)),
                                 ("l_1", "l_2", "l_3"): rng.integers(0, 4, (3, 2))}, 0.7, forward)
