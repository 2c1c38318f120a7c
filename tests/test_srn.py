"""Tests of tpgraph.models.srn's input and output kinds: real inputs and a linear (regression) output."""

import numpy as np
import pytest

import tpgraph as tp
from tpgraph.errors import ConfigError, DataError


def _numpy_forward(params, x):
    """The SRN of Eqs. 13-15 with real inputs and a linear output, in plain NumPy: y_L."""
    h = np.zeros((x.shape[1], params["W_h"].shape[0]))
    for t in range(x.shape[0]):
        h = np.tanh(x[t] @ params["W_xh"].T + h @ params["W_h"].T + params["b_h"])
    return h @ params["W_hy"].T + params["b_y"]


def test_regression_srn_declares_real_inputs_mse_and_a_linear_output():
    g = tp.build_srn(3, 2, 5, 1, many_to_many=False, inputs="real", output="linear")
    assert g.node("x_1").kind == "input" and g.node("x_1").size == 2
    assert g.node("y_3").kind == "dense" and g.node("y_3").act == "identity"
    assert g.node("E_3").kind == "mse" and g.node("l_3").kind == "input"
    assert "y_2" not in g.nx


def test_regression_srn_predicts_and_evaluates_like_numpy():
    model = tp.SRN(2, 6, 1, dtype="float64", many_to_many=False, inputs="real", output="linear", seed=1,
                   tolerance=0.3)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2, 9, 8, 2))    # two batches of 8 sequences of length 9
    y = rng.uniform(size=(2, 1, 8, 1))
    want = np.stack([_numpy_forward(model.params, xb) for xb in x])   # [2, 8, 1]
    np.testing.assert_allclose(model.predict(x[0])[0], want[0], rtol=1e-12)
    ev = model.evaluate(x, y)
    err = want - y[:, 0]
    assert ev["loss"] == pytest.approx(float(np.mean(err ** 2)), rel=1e-12)
    assert ev["seq_acc"] == ev["step_acc"] == pytest.approx(float(np.mean(np.abs(err) < 0.3)))
    # the training loss is the same mean squared error, before the update
    assert model.train_step(x[0], y[0]) == pytest.approx(float(np.mean(err[0] ** 2)), rel=1e-12)


def test_per_position_accuracy_matches_numpy_for_classes_and_regression():
    model = tp.SRN(4, 7, 4, dtype="float64", seed=3)   # many-to-many classification, token inputs
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, (3, 6, 10))                 # three batches of 10 sequences of length 6
    y = rng.integers(0, 4, (3, 6, 10))
    p = model.params
    right = []
    for xb, yb in zip(x, y):
        h = np.zeros((10, 7))
        hits = []
        for t in range(6):
            h = np.tanh(np.eye(4)[xb[t]] @ p["W_xh"].T + h @ p["W_h"].T + p["b_h"])
            hits.append(np.argmax(h @ p["W_hy"].T + p["b_y"], axis=1) == yb[t])
        right.append(np.array(hits))                   # [6, 10]
    right = np.array(right)                            # [3, 6, 10]
    ev = model.evaluate(x, y, per_position=True)
    np.testing.assert_allclose(ev["position_acc"], right.mean(axis=(0, 2)), rtol=1e-12)
    assert ev["step_acc"] == pytest.approx(right.mean()) and ev["seq_acc"] == pytest.approx(right.all(1).mean())
    assert "position_acc" not in model.evaluate(x, y)
    reg = tp.SRN(2, 6, 1, dtype="float64", many_to_many=False, inputs="real", output="linear", seed=1,
                 tolerance=0.3)
    xr, yr = rng.uniform(size=(2, 9, 8, 2)), rng.uniform(size=(2, 1, 8, 1))
    err = np.stack([_numpy_forward(reg.params, xb) for xb in xr]) - yr[:, 0]
    assert reg.evaluate(xr, yr, per_position=True)["position_acc"] == [pytest.approx(np.mean(np.abs(err) < 0.3))]


def test_regression_labels_of_one_or_every_step():
    model = tp.SRN(2, 4, 1, many_to_many=False, inputs="real", output="linear")
    x = np.zeros((5, 3, 2))
    a = model.evaluate(x, np.full((1, 3, 1), 0.5))["loss"]
    b = model.evaluate(x, np.full((5, 3, 1), 0.5))["loss"]  # every step given: the last is used
    assert a == b
    with pytest.raises(DataError, match=r"labels must have shape \[1, 3, 1\]"):
        model.train_step(x, np.zeros((1, 3)))
    with pytest.raises(DataError, match=r"inputs must be time-major reals \[L, B, 2\]"):
        model.train_step(np.zeros((5, 3), dtype=np.int64), np.zeros((1, 3, 1)))


def test_bad_kinds_are_config_errors():
    with pytest.raises(ConfigError, match="inputs must be one of"):
        tp.SRN(2, 4, 1, inputs="onehot")
    with pytest.raises(ConfigError, match="output must be one of"):
        tp.SRN(2, 4, 1, output="sigmoid")
    with pytest.raises(ConfigError, match="tolerance must be a finite number > 0"):
        tp.SRN(2, 4, 1, output="linear", tolerance=0)


def test_engines_per_length_are_a_bounded_lru_cache_sharing_one_state():
    model = tp.SRN(4, 8, 4, cache_size=3, seed=1)
    ref = tp.SRN(4, 8, 4, seed=1)
    rng = np.random.default_rng(0)
    for L in (3, 4, 5, 3, 6, 7, 3):  # 3 is used again and again: it stays
        x = rng.integers(0, 4, (L, 5))
        assert model.train_step(x, x) == ref.train_step(x, x)  # eviction changes no result
        assert len(model._engines) <= 3
    assert list(model._engines) == [6, 7, 3]  # least recently used first
    engines = [model.engine(L) for L in (6, 7, 3)]
    assert all(e.optimizers is engines[0].optimizers and e.rng is engines[0].rng for e in engines)
    assert model.optimizer_state().keys() == ref.optimizer_state().keys()
    for g in model.params:
        np.testing.assert_array_equal(model.params[g], ref.params[g])
    assert tp.models.srn.ENGINE_CACHE_SIZE >= 2 and tp.SRN(4, 8, 4).cache_size == tp.models.srn.ENGINE_CACHE_SIZE
    with pytest.raises(ConfigError, match="cache_size"):
        tp.SRN(4, 8, 4, cache_size=0)


def test_bptt_graph_is_the_tp_graph_with_gradient_rules():
    for m2m in (True, False):
        tp_graph = tp.SRN(4, 8, 4, many_to_many=m2m).graph(5)
        bptt = tp.SRN(4, 8, 4, method="bptt", many_to_many=m2m).graph(5)
        want = tp_graph.with_rules("gradient")
        assert list(bptt.nx.edges(data=True)) == list(want.nx.edges(data=True))
        assert [repr(n) for n in bptt.nodes] == [repr(n) for n in want.nodes]
        assert [n.inverses for n in bptt.nodes if hasattr(n, "inverses")] == \
            [n.inverses for n in want.nodes if hasattr(n, "inverses")]


def test_tp_learns_the_adding_problem_below_its_baseline():
    task = tp.tasks.make_task("adding", length=15)
    model = tp.SRN(2, 24, 1, many_to_many=False, inputs="real", output="linear", alpha=0.5, lr_f=1e-3,
                   lr_g=1e-3, lr_y=3e-3, seed=0)
    rng = np.random.default_rng(0)
    xv, yv = task.validation_set(1, 4, 50)
    for i in range(700):
        x, y = task.batch(rng, 20)
        model.train_step(x, y, update_forward=i >= 100)
    assert model.evaluate(xv, yv)["loss"] < 0.8 * task.baseline_loss
