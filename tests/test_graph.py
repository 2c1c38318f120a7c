"""Declaring and validating graphs.

Every declaration error is a :class:`tpgraph.GraphError` raised at declaration,
``graph.validate()``, ``compile_plan(graph)`` or ``Engine(graph)`` — before any
kernel runs — and its message names the culprit and says what is wrong. Also:
``Graph.from_networkx``, the networkx view, ``with_rules``, ``ParamStore`` and
seeded initialisation.
"""

import re

import networkx as nx
import numpy as np
import pytest

import tpgraph as tp
from tpgraph.plan import compile_plan


# ---------------------------------------------------------------- helpers
def raised_before_run(build):
    """Run ``build()`` (declarations), then validate, compile and construct an engine.

    Returns ``(stage, error)`` of the first :class:`GraphError`; fails if
    nothing is raised or another exception type escapes. No stage runs a kernel.
    """
    stage = "declaration"
    try:
        g = build()
        stage = "validate"
        g.validate()
        stage = "compile"
        plan = compile_plan(g)
        stage = "engine"
        tp.Engine(plan)
    except tp.GraphError as exc:
        return stage, exc
    raise AssertionError(f"no GraphError was raised before running (got through stage {stage!r})")


def message(build):
    return str(raised_before_run(build)[1])


def assert_mentions(msg, *fragments):
    for f in fragments:
        assert f in msg, f"{f!r} not in message: {msg}"


def base(name="g", dtype="float64"):
    g = tp.Graph(name, dtype=dtype)
    g.input("x", 3)
    return g


def mlp(dtype="float64"):
    """A small valid graph: x -> h -> y -> cross-entropy against labels."""
    g = base(dtype=dtype)
    g.index_input("label", 2)
    g.dense("h", ["x"], 4, act="tanh", weights=["W1"], bias="b1")
    g.softmax_output("y", ["h"], 2, weights=["W2"], bias="b2")
    g.cross_entropy("E", "y", "label")
    return g


def test_the_small_graph_is_valid():
    g = mlp()
    order = g.validate()
    assert order.index("x") < order.index("h") < order.index("y") < order.index("E")
    tp.Engine(g)


# ---------------------------------------------------------------- cycles
def test_cycle_is_shown():
    def build():
        g = base("cyc")
        g.dense("a", ["x", "c"], 3)
        g.dense("b", ["a"], 3)
        g.dense("c", ["b"], 3)
        g.index_input("l", 3)
        g.softmax_output("y", ["c"], 3)
        g.cross_entropy("E", "y", "l")
        return g

    stage, exc = raised_before_run(build)
    assert stage == "validate"
    msg = str(exc)
    assert "cycle" in msg
    rotations = ["a -> b -> c -> a", "b -> c -> a -> b", "c -> a -> b -> c"]
    assert any(r in msg for r in rotations), msg
    # the nodes off the cycle are not part of the shown path
    path = re.search(r"(\w+(?: -> \w+)+)", msg).group(1)
    assert set(path.split(" -> ")) == {"a", "b", "c"}


def test_self_loop_is_a_cycle():
    def build():
        g = base()
        g.dense("a", ["x", "a"], 3)
        g.input("t", 3)
        g.mse("L", "a", "t")
        return g

    msg = message(build)
    assert_mentions(msg, "cycle", "a -> a")


def long_chain(n, back=None):
    """``x -> a0 -> ... -> a{n-1} -> loss``; ``back=(i, j)``: ``a{i}`` also reads ``a{j}``."""
    g = base("long")
    for i in range(n):
        inputs = ["x" if i == 0 else f"a{i - 1}"]
        if back and back[0] == i:
            inputs.append(f"a{back[1]}")
        g.dense(f"a{i}", inputs, 3)
    g.input("t", 3)
    g.mse("L", f"a{n - 1}", "t")
    return g


def test_cycle_deep_in_a_long_graph_is_shown_alone():
    # 5000 nodes upstream of a cycle of 3, 5000 downstream of it
    g = long_chain(10_000, back=(5000, 5002))
    with pytest.raises(tp.GraphError) as exc:
        g.validate()
    path = re.search(r"(\w+(?: -> \w+)+)", str(exc.value)).group(1).split(" -> ")
    assert path[0] == path[-1] and sorted(path[1:]) == ["a5000", "a5001", "a5002"], path


def test_topological_order_matches_networkx_and_finds_cycles():
    from tpgraph.graph import topological_order

    rng = np.random.default_rng(0)
    for seed in range(50):
        g = nx.gnp_random_graph(25, 0.12, directed=True, seed=seed)
        dag = nx.DiGraph()
        dag.add_nodes_from(rng.permutation(25).tolist())
        dag.add_edges_from((u, v) for u, v in g.edges if u < v)
        assert topological_order(dag) == (list(nx.topological_sort(dag)), None)
        order, cycle = topological_order(g)
        if cycle is None:
            assert nx.is_directed_acyclic_graph(g)
        else:
            assert all(g.has_edge(cycle[k], cycle[(k + 1) % len(cycle)]) for k in range(len(cycle)))


def test_validation_is_linear_in_the_graph(monkeypatch):
    # no cycle search on a DAG (networkx's find_cycle re-walks the graph per node: quadratic)
    monkeypatch.setattr(nx, "find_cycle", lambda *a, **k: pytest.fail("find_cycle called on a DAG"))
    long_chain(2000).validate()
    # a chain of adds: each add's size is found once, not by walking back to the chain's start
    calls = {"n": 0}
    node = tp.Graph.node

    def counting(self, name):
        calls["n"] += 1
        return node(self, name)

    for n in (500, 2000):
        g = base("adds")
        g.add_node("s0", ["x"])
        for i in range(1, n):
            g.add_node(f"s{i}", [f"s{i - 1}", "x"])
        g.mse("L", f"s{n - 1}", "x")
        calls["n"] = 0
        monkeypatch.setattr(tp.Graph, "node", counting)
        g.validate()
        monkeypatch.setattr(tp.Graph, "node", node)
        assert calls["n"] < 12 * n, (n, calls["n"])


# ---------------------------------------------------------------- shapes
def test_add_shape_mismatch_names_both_shapes():
    def build():
        g = base()
        g.input("z", 4)
        g.add_node("s", ["x", "z"])
        g.input("t", 3)
        g.mse("L", "s", "t")
        return g

    msg = message(build)
    assert_mentions(msg, "'s'", "'x'", "'z'", "(3,)", "(4,)", "shape")


def test_mse_shape_mismatch_names_prediction_and_target():
    def build():
        g = base()
        g.input("t", 4)
        g.dense("h", ["x"], 5)
        g.mse("L", "h", "t")
        return g

    msg = message(build)
    assert_mentions(msg, "'L'", "'h'", "'t'", "5", "4", "shape")


def test_cross_entropy_classes_vs_logits():
    def build():
        g = base()
        g.index_input("l", 4)
        g.softmax_output("y", ["x"], 5)
        g.cross_entropy("E", "y", "l")
        return g

    msg = message(build)
    assert_mentions(msg, "'E'", "'y'", "'l'", "5", "4 classes")


def test_dense_input_size_clash_through_a_shared_group():
    """Two nodes sharing ``W`` with inputs of different sizes."""
    def build():
        g = base()
        g.input("z", 5)
        g.dense("a", ["x"], 3, weights=["W"])
        g.dense("b", ["z"], 3, weights=["W"])
        g.add_node("s", ["a", "b"])
        g.input("t", 3)
        g.mse("L", "s", "t")
        return g

    msg = message(build)
    assert_mentions(msg, "'W'", "(3, 3)", "(3, 5)", "'a'", "'b'")


def test_parameter_group_with_two_shapes():
    def build():
        g = base()
        g.dense("a", ["x"], 3, weights=["W"])
        g.dense("b", ["a"], 4, weights=["W"])
        g.input("t", 4)
        g.mse("L", "b", "t")
        return g

    msg = message(build)
    assert_mentions(msg, "'W'", "two different shapes", "(3, 3)", "(4, 3)", "'a'", "'b'")


def test_bias_and_inverse_groups_clash_in_shape():
    def build():
        g = base()
        g.dense("a", ["x"], 3, bias="b")
        g.dense("c", ["a"], 5, bias="b", rules=["dtp"])
        g.add_inverse("c", of="a", weight="V")
        g.input("t", 5)
        g.mse("L", "c", "t")
        return g

    msg = message(build)
    assert_mentions(msg, "'b'", "(3,)", "(5,)")


# ---------------------------------------------------------------- credit rules and inverses
@pytest.mark.parametrize("rule", ["dtp", "tp"])
def test_dtp_tp_edge_without_inverse(rule):
    def build():
        g = base()
        g.dense("a", ["x"], 3)
        g.dense("b", ["a"], 3, rules=[rule])
        g.input("t", 3)
        g.mse("L", "b", "t")
        return g

    stage, exc = raised_before_run(build)
    assert stage == "validate"
    assert_mentions(str(exc), "'a' -> 'b'", repr(rule), "inverse")


def test_inverse_for_another_input_does_not_count():
    """An inverse of ``b`` with respect to ``x`` does not serve the dtp edge from ``a``."""
    def build():
        g = base()
        g.dense("a", ["x"], 3)
        g.dense("b", ["a", "x"], 3, rules=["dtp", "gradient"])
        g.add_inverse("b", of="x", weight="V")
        g.input("t", 3)
        g.mse("L", "b", "t")
        return g

    assert_mentions(message(build), "'a' -> 'b'", "'dtp'", "inverse")


def test_dtp_edge_into_an_add():
    def build():
        g = base()
        g.dense("a", ["x"], 3)
        g.add_node("s", ["a", "x"], rules=["dtp", "gradient"])
        g.input("t", 3)
        g.mse("L", "s", "t")
        return g

    assert_mentions(message(build), "'a' -> 's'", "'dtp'", "inverse")


def test_inverse_on_a_non_dense_node_or_foreign_input():
    g = base()
    g.dense("a", ["x"], 3)
    g.add_node("s", ["a", "x"])
    with pytest.raises(tp.GraphError, match=r"'s'.*add.*only dense"):
        g.add_inverse("s", of="a", weight="V")
    with pytest.raises(tp.GraphError, match=r"'a'.*'q'.*not one of its inputs"):
        g.add_inverse("a", of="q", weight="V")
    with pytest.raises(tp.GraphError, match="'ghost'"):
        g.add_inverse("ghost", of="x", weight="V")


def test_inverse_with_respect_to_integer_data():
    def build():
        g = base()
        g.index_input("s", 4)
        g.dense("a", ["x", "s"], 3, rules=["gradient", "dtp"])
        g.add_inverse("a", of="s", weight="V")
        g.input("t", 3)
        g.mse("L", "a", "t")
        return g

    assert_mentions(message(build), "'a'", "'s'", "integer")


@pytest.mark.parametrize("bad", [
    dict(act="swish"), dict(others="all"), dict(noise=-0.1), dict(noise=float("nan")), dict(noise="lots"),
])
def test_bad_inverse_settings(bad):
    g = base()
    g.dense("a", ["x"], 3)
    g.dense("b", ["a"], 3, rules=["dtp"])
    with pytest.raises(tp.GraphError) as info:
        g.add_inverse("b", of="a", weight="V", **bad)
    assert "'b'" in str(info.value)
    (key, value), = bad.items()
    assert key in str(info.value) or repr(value) in str(info.value)


def test_inverse_others_forward_needs_equal_sizes():
    def build():
        g = base()
        g.input("z", 2)
        g.dense("a", ["x"], 4)
        g.dense("b", ["a", "z"], 3, rules=["dtp", "gradient"])
        g.add_inverse("b", of="a", weight="V", others="forward")
        g.input("t", 3)
        g.mse("L", "b", "t")
        return g

    assert_mentions(message(build), "'b'", "'a'")


def test_inverse_others_forward_with_equal_sizes_runs():
    g = base()
    g.input("z", 2)
    g.dense("a", ["x"], 3)
    g.dense("b", ["a", "z"], 3, rules=["dtp", "gradient"])
    g.add_inverse("b", of="a", weight="V", others="forward")
    g.input("t", 3)
    g.mse("L", "b", "t")
    res = tp.Engine(g).step({"x": np.ones((2, 3)), "z": np.ones((2, 2)), "t": np.ones((2, 3))})
    assert np.isfinite(res.loss)


def test_group_used_by_forward_node_and_by_inverse():
    def build():
        g = base()
        g.dense("a", ["x"], 3, weights=["W"])
        g.dense("b", ["a"], 3, weights=["U"], rules=["dtp"])
        g.add_inverse("b", of="a", weight="W")  # the forward group of 'a', same shape
        g.input("t", 3)
        g.mse("L", "b", "t")
        return g

    stage, exc = raised_before_run(build)
    assert stage in ("validate", "compile")
    assert_mentions(str(exc), "'W'", "inverse", "forward")


# ---------------------------------------------------------------- kinds, inputs, names
def test_unknown_kind_from_networkx():
    G = nx.DiGraph()
    G.add_node("x", kind="input", size=3)
    G.add_node("weird", kind="foo", inputs=("x",))
    G.add_edge("x", "weird")
    with pytest.raises(tp.GraphError) as info:
        tp.Graph.from_networkx(G)
    assert_mentions(str(info.value), "'weird'", "'foo'", "unknown kind", "dense")


def test_unknown_attribute_from_networkx():
    G = nx.DiGraph()
    G.add_node("x", kind="input", size=3, colour="red")
    with pytest.raises(tp.GraphError) as info:
        tp.Graph.from_networkx(G)
    assert_mentions(str(info.value), "'x'", "colour")


def test_missing_input():
    def build():
        g = base()
        g.dense("a", ["x", "ghost"], 3)
        g.input("t", 3)
        g.mse("L", "a", "t")
        return g

    stage, exc = raised_before_run(build)
    assert stage == "validate"
    assert_mentions(str(exc), "'a'", "'ghost'", "missing")


def test_duplicate_node_name():
    g = base()
    with pytest.raises(tp.GraphError, match="'x'.*twice"):
        g.input("x", 5)
    g.dense("h", ["x"], 2)
    with pytest.raises(tp.GraphError, match="'h'.*twice"):
        g.dense("h", ["x"], 2)
    # the first declaration stands
    assert g.node("x").size == 3


def test_duplicate_input():
    g = base()
    with pytest.raises(tp.GraphError) as info:
        g.dense("a", ["x", "x"], 3)
    assert_mentions(str(info.value), "'a'", "'x'", "twice")
    with pytest.raises(tp.GraphError, match="'s'"):
        g.add_node("s", ["x", "x"])


def test_data_input_cannot_have_inputs():
    with pytest.raises(tp.GraphError, match="'d'.*cannot have inputs"):
        tp.Input("d", inputs=("x",), size=2)


@pytest.mark.parametrize("size", [0, -3, 2.5, "3", True, None])
def test_bad_sizes(size):
    g = base()
    with pytest.raises(tp.GraphError) as info:
        g.dense("a", ["x"], size)
    assert_mentions(str(info.value), "'a'", "size", repr(size))


def test_weights_count_must_match_inputs():
    g = base()
    g.input("z", 2)
    with pytest.raises(tp.GraphError, match=r"'a'.*1 weight groups for 2 inputs"):
        g.dense("a", ["x", "z"], 3, weights=["W"])


def test_dense_needs_an_input():
    with pytest.raises(tp.GraphError, match="'a'"):
        tp.Graph().dense("a", [], 3)


def test_a_loss_cannot_feed_a_node():
    def build():
        g = mlp()
        g.dense("after", ["E"], 2)
        g.input("t", 2)
        g.mse("L2", "after", "t")
        return g

    assert_mentions(message(build), "'E' -> 'after'", "loss")


def test_add_of_integer_data():
    def build():
        g = base()
        g.index_input("s", 3)
        g.add_node("a", ["x", "s"])
        g.input("t", 3)
        g.mse("L", "a", "t")
        return g

    assert_mentions(message(build), "'a'", "'s'", "integer")


# ---------------------------------------------------------------- losses
def test_loss_with_one_input():
    with pytest.raises(tp.GraphError) as info:
        tp.MSE("L", ("h",))
    assert_mentions(str(info.value), "'L'", "nothing to compare against")
    g = base()
    with pytest.raises(tp.GraphError, match="'E'.*nothing to compare against"):
        g.add(tp.CrossEntropy("E", ("x",)))


def test_cross_entropy_labels_must_be_integer_data():
    def build():
        g = base()
        g.input("l", 3)
        g.softmax_output("y", ["x"], 3)
        g.cross_entropy("E", "y", "l")
        return g

    assert_mentions(message(build), "'E'", "'l'", "nothing to compare against", "integer")


def test_cross_entropy_prediction_must_be_logits():
    def build():
        g = base()
        g.index_input("l", 3)
        g.dense("h", ["x"], 3)
        g.cross_entropy("E", "h", "l")
        return g

    assert_mentions(message(build), "'E'", "'h'", "softmax")


def test_mse_against_integer_data():
    def build():
        g = base()
        g.index_input("l", 3)
        g.dense("h", ["x"], 3)
        g.mse("L", "h", "l")
        return g

    assert_mentions(message(build), "'L'", "cross_entropy")


def test_unknown_reduction():
    with pytest.raises(tp.GraphError) as info:
        base().mse("L", "x", "x2", reduction="median")
    assert_mentions(str(info.value), "'L'", "'median'", "mean", "sum")


def test_label_edge_must_carry_no_credit():
    with pytest.raises(tp.GraphError, match="'L'.*'t'.*'none'"):
        tp.MSE("L", ("h", "t"), ("gradient", "gradient"))
    with pytest.raises(tp.GraphError, match="'L'.*'h'"):
        tp.MSE("L", ("h", "t"), ("none", "none"))


def test_graph_without_loss():
    def build():
        g = base("noloss")
        g.dense("h", ["x"], 3)
        return g

    stage, exc = raised_before_run(build)
    assert stage == "validate"
    assert_mentions(str(exc), "'noloss'", "no loss")


def test_empty_graph():
    assert_mentions(message(lambda: tp.Graph("void")), "'void'", "empty")


# ---------------------------------------------------------------- names of things
def test_unknown_activation():
    g = base()
    with pytest.raises(tp.GraphError) as info:
        g.dense("a", ["x"], 3, act="swish")
    assert_mentions(str(info.value), "'a'", "'swish'", "tanh", "leaky_relu")


def test_softmax_output_activation_is_fixed():
    with pytest.raises(tp.GraphError, match="'y'.*identity"):
        base().softmax_output("y", ["x"], 3, act="tanh")


def test_unknown_credit_rule():
    g = base()
    with pytest.raises(tp.GraphError) as info:
        g.dense("a", ["x"], 3, rules=["magic"])
    assert_mentions(str(info.value), "'x' -> 'a'", "'magic'", "dtp", "gradient")
    g.dense("a", ["x"], 3)
    with pytest.raises(tp.GraphError, match=r"'x' -> 'a'.*'magic'"):
        g.set_rule("a", "x", "magic")
    with pytest.raises(tp.GraphError, match=r"no edge 'q' -> 'a'"):
        g.set_rule("a", "q", "gradient")
    assert g.nx.edges["x", "a"]["rule"] == "gradient"


def test_rules_count_must_match_inputs():
    with pytest.raises(tp.GraphError, match="'a'.*2 credit rules for 1 inputs"):
        base().dense("a", ["x"], 3, rules=["gradient", "dtp"])


def test_unknown_merge_strategy():
    with pytest.raises(tp.GraphError) as info:
        tp.Graph("m", merge="median")
    assert_mentions(str(info.value), "'m'", "'median'", "linear", "mean")

    def build():
        g = base()
        g.dense("a", ["x"], 3, merge="median")
        g.input("t", 3)
        g.mse("L", "a", "t")
        return g

    stage, exc = raised_before_run(build)
    assert stage in ("declaration", "validate")
    assert_mentions(str(exc), "'a'", "'median'")


def test_register_merge_refuses_builtin_names_and_non_callables():
    with pytest.raises(tp.GraphError, match="'linear'"):
        tp.register_merge("linear", lambda h, p: h)
    with pytest.raises(tp.GraphError, match="'not_callable'"):
        tp.register_merge("not_callable", 3)
    assert "not_callable" not in tp.known_merges()


# ---------------------------------------------------------------- dtypes and initialisers
@pytest.mark.parametrize("dtype", ["int32", "float16", "complex128", object, "int64"])
def test_wrong_dtype(dtype):
    with pytest.raises(tp.GraphError) as info:
        tp.Graph("d", dtype=dtype)
    assert_mentions(str(info.value), "'d'", "float32", "float64")


def test_unparseable_dtype():
    with pytest.raises(tp.GraphError, match="junk"):
        tp.Graph("d", dtype="junk")


def test_params_of_the_wrong_dtype_or_shape_are_refused_by_the_engine():
    g = mlp("float64")
    p32 = tp.ParamStore(g.init_params(0).to_dict(), np.float32)
    with pytest.raises(tp.GraphError, match="float64"):
        tp.Engine(g, p32)
    values = g.init_params(0).to_dict()
    values["W1"] = np.zeros((4, 5))
    with pytest.raises(tp.GraphError, match="'W1'"):
        tp.Engine(g, tp.ParamStore(values, np.float64))
    del values["W1"]
    with pytest.raises(tp.GraphError, match="W1"):
        tp.Engine(g, tp.ParamStore(values, np.float64))


@pytest.mark.parametrize("spec,fragment", [
    ("foo", "'foo'"), ("normal:abc", "non-numeric"), (3, "3"), ("", "''"),
])
def test_bad_initialiser_spec_at_declaration(spec, fragment):
    g = mlp()
    with pytest.raises(tp.GraphError) as info:
        g.init("W1", spec)
    assert_mentions(str(info.value), "'W1'", fragment)


@pytest.mark.parametrize("spec", [
    pytest.param(np.zeros((5, 5)), id="array-of-wrong-shape"),
    pytest.param(lambda rng, shape: np.zeros((2, 2)), id="callable-of-wrong-shape"),
])
def test_bad_initialiser_found_before_any_kernel(spec):
    def build():
        g = mlp()
        g.init("W1", spec)
        return g

    assert_mentions(message(build), "'W1'", "(4, 3)")


def test_orthogonal_init_of_a_bias_is_refused_before_any_kernel():
    def build():
        g = mlp()
        g.init("b1", "orthogonal")
        return g

    assert_mentions(message(build), "orthogonal", "(4,)")


def test_orthogonal_init_of_a_bias_names_the_group():
    def build():
        g = mlp()
        g.init("b1", "orthogonal")
        return g

    assert_mentions(message(build), "'b1'")


@pytest.mark.parametrize("spec", [
    pytest.param("normal:-1", id="negative-std"),
    pytest.param("normal:nan", id="nan-std"),
    pytest.param("uniform:inf", id="infinite-range"),
    pytest.param(np.full((4, 3), np.nan), id="array-with-nan"),
])
def test_initialiser_with_bad_numbers(spec):
    def build():
        g = mlp()
        g.init("W1", spec)
        return g

    assert_mentions(message(build), "'W1'")


def test_initialiser_of_an_unknown_group():
    def build():
        g = mlp()
        g.init("W_typo", "zeros")
        return g

    assert_mentions(message(build), "'W_typo'")


# ---------------------------------------------------------------- settings the engine takes as numbers
def test_leaky_slope_is_validated():
    def build():
        g = base()
        g.dense("a", ["x"], 3, act="leaky_relu", slope="abc")
        g.input("t", 3)
        g.mse("L", "a", "t")
        return g

    assert_mentions(message(build), "'a'", "slope")


@pytest.mark.parametrize("alpha", [
    pytest.param("big", id="string"),
    pytest.param(-1.0, id="negative"),
    pytest.param(float("nan"), id="nan"),
])
def test_loss_alpha_is_validated(alpha):
    def build():
        g = base()
        g.dense("a", ["x"], 3)
        g.input("t", 3)
        g.mse("L", "a", "t", alpha=alpha)
        return g

    assert_mentions(message(build), "'L'", "alpha")


def test_engine_alpha_is_validated():
    for alpha in ("big", -1.0, float("nan"), 0.0):
        with pytest.raises(tp.TPGraphError, match="alpha"):
            tp.Engine(mlp(), alpha=alpha)


def test_non_iterable_inputs():
    with pytest.raises(tp.GraphError, match="'a'"):
        base().dense("a", 5, 3)


# ---------------------------------------------------------------- from_networkx
def plain_nx():
    """The small graph of :func:`plain_api` as plain networkx attributes."""
    G = nx.DiGraph(name="plain")
    G.add_node("x", kind="input", size=3)
    G.add_node("s", kind="index_input", num_classes=4)
    G.add_node("a", kind="dense", inputs=("x", "s"), size=5, act="tanh", weights=("Wa", "Wsa"), bias="ba")
    G.add_node("b", kind="dense", inputs=("a", "s"), size=5, act="sigmoid", weights=("Wb", "Wsb"), bias="bb",
               inverses={"a": {"weight": "Vb", "bias": "cb"}})
    G.add_node("sum", kind="add", inputs=("a", "b"))
    G.add_node("y", kind="softmax_output", inputs=("sum",), size=4, weights=("Wy",), bias="by")
    G.add_node("label", kind="index_input", num_classes=4)
    G.add_node("E", kind="cross_entropy", inputs=("y", "label"))
    for u, v in [("x", "a"), ("s", "a"), ("a", "b"), ("s", "b"), ("a", "sum"), ("b", "sum"), ("sum", "y"),
                 ("y", "E"), ("label", "E")]:
        G.add_edge(u, v)
    G.edges["a", "b"]["rule"] = "dtp"
    G.edges["s", "b"]["rule"] = "none"
    return G


def plain_api():
    g = tp.Graph("plain", dtype="float64")
    g.input("x", 3)
    g.index_input("s", 4)
    g.dense("a", ["x", "s"], 5, act="tanh", weights=["Wa", "Wsa"], bias="ba")
    g.dense("b", ["a", "s"], 5, act="sigmoid", weights=["Wb", "Wsb"], bias="bb", rules=["dtp", "none"])
    g.add_inverse("b", of="a", weight="Vb", bias="cb")
    g.add_node("sum", ["a", "b"])
    g.softmax_output("y", ["sum"], 4, weights=["Wy"], bias="by")
    g.index_input("label", 4)
    g.cross_entropy("E", "y", "label")
    return g


def test_from_networkx_builds_the_same_working_graph():
    g = tp.Graph.from_networkx(plain_nx(), dtype="float64")
    ref = plain_api()
    assert g.name == "plain"
    assert g.param_shapes() == ref.param_shapes()
    assert g.nx.edges["a", "b"]["rule"] == "dtp" and g.nx.edges["s", "b"]["rule"] == "none"
    assert g.nx.edges["x", "a"]["rule"] == "gradient"
    rng = np.random.default_rng(0)
    B = 4
    batch = {"x": rng.normal(size=(B, 3)), "s": rng.integers(0, 4, B), "label": rng.integers(0, 4, B)}
    e1, e2 = tp.Engine(g, seed=5, lr=0.1), tp.Engine(ref, seed=5, lr=0.1)
    for _ in range(2):
        r1, r2 = e1.step(batch), e2.step(batch)
        assert np.isfinite(r1.loss)
        assert r1.loss == r2.loss
    for k in ref.param_shapes():
        np.testing.assert_array_equal(e1.params[k], e2.params[k])
    assert not np.array_equal(e1.params["Vb"], g.init_params(5)["Vb"])  # the inverse was trained


def test_from_networkx_defaults_inputs_to_sorted_predecessors():
    G = nx.DiGraph()
    G.add_node("x2", kind="input", size=2)
    G.add_node("x1", kind="input", size=3)
    G.add_node("a", kind="dense", size=4, weights=("W1", "W2"))
    G.add_edge("x2", "a", rule="none")
    G.add_edge("x1", "a")
    g = tp.Graph.from_networkx(G)
    assert g.node("a").inputs == ("x1", "x2")
    assert g.node("a").rules == ("gradient", "none")


def test_from_networkx_accepts_node_objects():
    G = nx.DiGraph()
    G.add_node("x", node=tp.Input("x", size=2))
    G.add_node("t", node=tp.Input("t", size=2))
    G.add_node("h", node=tp.Dense("h", ("x",), size=2, weights=("W",)))
    G.add_node("L", node=tp.MSE("L", ("h", "t")))
    g = tp.Graph.from_networkx(G)
    g.validate()
    assert g.node("h") is not G.nodes["h"]["node"]  # copied, not shared


def test_from_networkx_rejects_junk_node_attribute():
    G = nx.DiGraph()
    G.add_node("x", node="not a node")
    with pytest.raises(tp.GraphError, match="Node"):
        tp.Graph.from_networkx(G)


def test_from_networkx_with_inverse_objects():
    G = plain_nx()
    G.nodes["b"]["inverses"] = {"a": tp.Inverse(of="a", weight="Vb", bias="cb")}
    g = tp.Graph.from_networkx(G, dtype="float64")
    assert g.param_shapes() == plain_api().param_shapes()


@pytest.mark.parametrize("inverses", [{"a": {"weight": "Vb", "bogus": 1}}, ["a"]])
def test_from_networkx_with_bad_inverse_attributes(inverses):
    G = plain_nx()
    G.nodes["b"]["inverses"] = inverses
    with pytest.raises(tp.GraphError, match="'b'"):
        tp.Graph.from_networkx(G)


# ---------------------------------------------------------------- the networkx view
def test_nx_is_a_real_digraph_with_rules_and_slots():
    g = tp.build_srn(4, 3, 5, 2, dtype="float64")
    G = g.nx
    assert isinstance(G, nx.DiGraph)
    assert nx.is_directed_acyclic_graph(G)
    order = list(nx.topological_sort(G))
    pos = {v: i for i, v in enumerate(order)}
    for u, v in G.edges:
        assert pos[u] < pos[v]
    for n in g.nodes:
        assert sorted(G.predecessors(n.name)) == sorted(n.inputs)
        for slot, (u, r) in enumerate(zip(n.inputs, n.rules)):
            assert G.edges[u, n.name]["slot"] == slot
            assert G.edges[u, n.name]["rule"] == r
    assert G.edges["h_1", "h_2"]["rule"] == "dtp"
    assert G.edges["x_2", "h_2"]["rule"] == "none"
    assert G.edges["h_2", "y_2"]["rule"] == "gradient"
    assert G.edges["l_2", "E_2"]["rule"] == "none"
    assert nx.has_path(G, "x_1", "E_4") and not nx.has_path(G, "h_3", "E_2")
    assert G.nodes["h_2"]["node"] is g.node("h_2")


def test_set_rule_updates_node_and_edge():
    g = mlp()
    g.set_rule("y", "h", "none")
    assert g.node("y").rules == ("none",)
    assert g.nx.edges["h", "y"]["rule"] == "none"


# ---------------------------------------------------------------- with_rules
def test_with_rules_gradient_changes_every_credit_edge_but_not_label_edges():
    g = tp.build_srn(5, 3, 4, 2, dtype="float64")
    bp = g.with_rules("gradient")
    for u, v, data in g.nx.edges(data=True):
        new = bp.nx.edges[u, v]["rule"]
        if data["rule"] == "none":
            assert new == "none", (u, v)  # label edges and x_t -> h_t stay
        else:
            assert new == "gradient", (u, v)
        slot = bp.nx.edges[u, v]["slot"]
        assert bp.node(v).rules[slot] == new
    # the original is untouched, and the copy shares nothing with it
    assert g.nx.edges["h_1", "h_2"]["rule"] == "dtp"
    assert g.node("h_2").rules[1] == "dtp"
    assert bp.node("h_2") is not g.node("h_2")
    assert bp.param_shapes() == g.param_shapes()
    bp.validate()


def test_with_rules_mapping():
    g = tp.build_srn(3, 3, 4, 2, dtype="float64")
    tp_graph = g.with_rules({"dtp": "tp"})
    assert tp_graph.nx.edges["h_1", "h_2"]["rule"] == "tp"
    assert tp_graph.nx.edges["h_2", "y_2"]["rule"] == "gradient"
    assert tp_graph.nx.edges["l_2", "E_2"]["rule"] == "none"
    tp.Engine(tp_graph)


def test_with_rules_refuses_unknown_rules():
    with pytest.raises(tp.GraphError, match="'magic'"):
        mlp().with_rules("magic")


# ---------------------------------------------------------------- parameters
def test_param_store_assignment_checks_shape_and_nan():
    g = mlp("float32")
    p = g.init_params(0)
    live = p["W1"]
    with pytest.raises(tp.GraphError) as info:
        p["W1"] = np.zeros((3, 4))
    assert_mentions(str(info.value), "'W1'", "(4, 3)", "(3, 4)")
    for bad in (np.nan, np.inf):
        value = np.ones((4, 3))
        value[1, 2] = bad
        with pytest.raises(tp.GraphError, match="'W1'.*(NaN|inf)"):
            p["W1"] = value
    with pytest.raises(tp.GraphError, match="'nope'"):
        p["nope"] = np.zeros(2)
    # nothing was half-written
    assert np.all(np.isfinite(p["W1"]))
    new = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
    p["W1"] = new
    assert p["W1"] is live  # in place: engines hold references
    assert p["W1"].dtype == np.float32
    np.testing.assert_array_equal(p["W1"], new.astype(np.float32))


@pytest.mark.parametrize("value", [
    pytest.param(np.full((4, 3), "a"), id="strings"),
    pytest.param(np.full((4, 3), None), id="objects"),
    pytest.param(np.full((4, 3), 1 + 2j), id="complex"),
])
@pytest.mark.filterwarnings("ignore:Casting complex values")
def test_param_store_refuses_non_real_values(value):
    p = mlp().init_params(0)
    with pytest.raises(tp.GraphError, match="'W1'"):
        p["W1"] = value


def test_param_store_assignment_reaches_the_engine():
    g = mlp()
    eng = tp.Engine(g)
    batch = {"x": np.ones((2, 3)), "label": np.array([0, 1])}
    before = eng.forward(batch).loss
    eng.params["W2"] = np.zeros((2, 4))
    eng.params["b2"] = np.zeros(2)
    after = eng.forward(batch).loss
    assert after != before
    assert after == pytest.approx(np.log(2.0), rel=1e-12)  # zero logits: uniform softmax


def test_init_params_is_deterministic():
    g = tp.build_srn(3, 4, 6, 3, dtype="float64")
    a, b, c = g.init_params(7), g.init_params(7), g.init_params(8)
    assert set(a) == set(g.param_shapes())
    for k in a:
        assert a[k].shape == g.param_shapes()[k]
        assert a[k].dtype == np.float64
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    for k in ("b_h", "b_y", "c_h"):  # the paper's zero biases
        assert not a[k].any()


@pytest.mark.parametrize("shape", [(6, 6), (7, 4), (3, 5)])
def test_orthogonal_init_is_orthogonal(shape):
    g = tp.Graph(dtype="float64")
    g.input("x", shape[1])
    g.input("t", shape[0])
    g.dense("h", ["x"], shape[0], act="identity", weights=["W"])
    g.mse("L", "h", "t")
    g.init("W", "orthogonal")
    for seed in (0, 1):
        W = g.init_params(seed)["W"]
        assert W.shape == shape
        if shape[0] >= shape[1]:
            np.testing.assert_allclose(W.T @ W, np.eye(shape[1]), atol=1e-12)
        else:
            np.testing.assert_allclose(W @ W.T, np.eye(shape[0]), atol=1e-12)
    assert not np.array_equal(g.init_params(0)["W"], g.init_params(1)["W"])


def test_srn_paper_init():
    g = tp.build_srn(2, 4, 8, 3, dtype="float64")
    p = g.init_params(3)
    for k in ("W_h", "V_h"):
        np.testing.assert_allclose(p[k] @ p[k].T, np.eye(8), atol=1e-12)
    big = tp.build_srn(2, 200, 100, 3, dtype="float64").init_params(0)["W_xh"]
    assert big.std() == pytest.approx(0.1, rel=0.05)


def test_init_with_array_and_callable():
    g = mlp()
    w = np.arange(12.0).reshape(4, 3)
    g.init("W1", w)
    g.init("W2", lambda rng, shape: np.full(shape, 0.5))
    p = g.init_params(0)
    np.testing.assert_array_equal(p["W1"], w)
    np.testing.assert_array_equal(p["W2"], np.full((2, 4), 0.5))


def test_validation_errors_are_tpgraph_errors():
    assert issubclass(tp.GraphError, tp.TPGraphError)
    assert issubclass(tp.DataError, tp.TPGraphError)
    assert issubclass(tp.DivergenceError, tp.TPGraphError)
