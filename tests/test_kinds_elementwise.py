"""The parameter-free elementwise kinds: multiply, activation, scale.

Their kernels against plain-NumPy references (written here from the
documented mathematics), their declaration errors, their proposals in the
engine against NumPy references for every rule they take, the gradient
special case against central finite differences (float64), and stacking:
stacked plans of graphs that use them equal the one-node-per-stack plan.
"""

import networkx as nx
import numpy as np
import pytest

import tpgraph as tp
from tpgraph.kernels import activations as ka
from tpgraph.kernels import elementwise as ke
from test_backprop import assert_gradients_match
from test_plan import assert_same_results, random_batch

DTYPES = [np.float32, np.float64]
CLIP = 1e-6


def tol(dtype):
    return dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------- NumPy references
def act_ref(z, name, slope=0.07):
    return {"identity": lambda: z.copy(), "tanh": lambda: np.tanh(z), "sigmoid": lambda: 1 / (1 + np.exp(-z)),
            "relu": lambda: np.where(z > 0, z, 0 * z), "leaky_relu": lambda: np.where(z > 0, z, slope * z)}[name]()


def inverse_ref(h, name, slope=0.07, clip=CLIP):
    """The exact inverse of an invertible activation, the output clipped inside the open range."""
    if name == "tanh":
        return np.arctanh(np.clip(h, -1 + clip, 1 - clip))
    if name == "sigmoid":
        q = np.clip(h, clip, 1 - clip)
        return np.log(q / (1 - q))
    if name == "leaky_relu":
        return np.where(h > 0, h, h / slope)
    assert name == "identity"
    return h.copy()


def blocks(dtype, k=3, rows=7, cols=5, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(rows, cols)).astype(dtype) for _ in range(k)]


# ---------------------------------------------------------------- kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_mul_blocks_matches_numpy_and_may_alias(dtype):
    a, b, _ = blocks(dtype)
    out = np.empty_like(a)
    ke.mul_blocks(a, b, out)
    np.testing.assert_allclose(out, a * b, **tol(dtype))
    want = a * b
    ke.mul_blocks(a, b, a)  # in place
    np.testing.assert_allclose(a, want, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_block_matches_numpy(dtype):
    x, _, _ = blocks(dtype)
    out = np.empty_like(x)
    ke.scale_block(x, dtype(-2.5), out)
    np.testing.assert_allclose(out, -2.5 * x, **tol(dtype))
    assert out.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ke.INVERTIBLE)
def test_act_inverse_matches_numpy_and_inverts_the_activation(dtype, name):
    z = blocks(dtype, k=1, seed=3)[0] * 2
    h = act_ref(z, name).astype(dtype)
    out = np.empty_like(h)
    ke.act_inverse(h, ka.ACTIVATIONS[name], 0.07, CLIP, out)
    np.testing.assert_allclose(out, inverse_ref(h.astype(np.float64), name).astype(dtype), **tol(dtype))
    # g(f(z)) = z away from the clipped ends (float32 loses digits where tanh and sigmoid are flat)
    rt = dict(rtol=1e-3, atol=2e-3) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(out, z, **rt)


@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_act_inverse_clips_at_the_ends_of_the_range(name):
    lo, hi = (-1.0, 1.0) if name == "tanh" else (0.0, 1.0)
    h = np.array([[lo, hi, lo - 0.5, hi + 0.5]])
    out = np.empty_like(h)
    ke.act_inverse(h, ka.ACTIVATIONS[name], 0.0, CLIP, out)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, inverse_ref(h, name), rtol=1e-12)
    assert out[0, 0] == out[0, 2] and out[0, 1] == out[0, 3]  # beyond the range: the clipped value


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ke.INVERTIBLE)
@pytest.mark.parametrize("difference", [True, False])
def test_act_inverse_displacement(dtype, name, difference):
    z, d, x = blocks(dtype, seed=5)
    h = act_ref(z, name).astype(dtype)
    d = (0.1 * d).astype(dtype)
    out = np.empty_like(h)
    ke.act_inverse_displacement(h, d, x, difference, ka.ACTIVATIONS[name], 0.07, CLIP, out)
    h64, d64 = h.astype(np.float64), d.astype(np.float64)
    ref = inverse_ref(h64 + d64, name) - (inverse_ref(h64, name) if difference else x)
    np.testing.assert_allclose(out, ref.astype(dtype), **(dict(rtol=1e-4, atol=1e-4) if dtype == np.float32
                                                         else tol(dtype)))


# ---------------------------------------------------------------- declaring
def small_graph(kind_setup):
    g = tp.Graph("e", dtype="float64")
    g.input("x", 4)
    g.dense("a", ["x"], 4, weights=["Wa"], rules=["none"])
    g.dense("b", ["x"], 4, weights=["Wb"], rules=["none"])
    kind_setup(g)
    g.softmax_output("y", ["m"], 2, weights=["Wy"])
    g.index_input("l", 2)
    g.cross_entropy("E", "y", "l")
    return g


@pytest.mark.parametrize("rule", ["dtp", "tp"])
def test_dtp_into_multiply_is_refused_naming_node_and_kind(rule):
    g = small_graph(lambda g: g.multiply("m", ["a", "b"], rules=["gradient", rule]))
    with pytest.raises(tp.GraphError, match=rf"edge 'b' -> 'm' has credit rule '{rule}'.*multiply node 'm' has no "
                                            r"inverse"):
        g.validate()


def test_fa_into_an_elementwise_node_is_refused():
    g = small_graph(lambda g: g.activation("m", "a", rules=["fa"]))
    with pytest.raises(tp.GraphError, match=r"'fa'.*activation node 'm' has no weights"):
        g.validate()


@pytest.mark.parametrize("act, slope", [("relu", 0.01), ("leaky_relu", 0.0)])
def test_dtp_into_a_non_invertible_activation_is_refused(act, slope):
    g = small_graph(lambda g: g.activation("m", "a", act=act, slope=slope, rules=["dtp"]))
    with pytest.raises(tp.GraphError, match=r"activation node 'm' has no inverse"):
        g.validate()


@pytest.mark.parametrize("setup, match", [
    (lambda g: g.multiply("m", ["a"]), r"multiply node 'm' needs at least 2 input"),
    (lambda g: g.activation("m", ["a", "b"]), r"activation node 'm' needs exactly 1 input"),
    (lambda g: g.activation("m", "a", act="swish"), r"node 'm': unknown activation 'swish'"),
    (lambda g: g.activation("m", "a", clip=0.0), r"node 'm': clip .* must be a finite number > 0"),
    (lambda g: g.scale("m", "a", 0.0), r"scale node 'm': factor must not be 0"),
    (lambda g: g.scale("m", "a", float("nan")), r"node 'm': factor must be a finite number"),
    (lambda g: g.multiply("m", ["a", "a"]), r"node 'm' lists the same input twice"),
])
def test_declaration_errors_name_the_node(setup, match):
    with pytest.raises(tp.GraphError, match=match):
        small_graph(setup)


def test_shape_mismatch_names_both_inputs():
    def setup(g):
        g.dense("c", ["x"], 3, weights=["Wc"], rules=["none"])
        g.multiply("m", ["a", "c"])
    g = small_graph(setup)
    with pytest.raises(tp.GraphError, match=r"multiply node 'm': shape mismatch between its inputs: 'a': \(4,\), "
                                            r"'c': \(3,\)"):
        g.validate()


def test_integer_data_into_an_elementwise_node_is_refused():
    def setup(g):
        g.index_input("s", 4)
        g.multiply("m", ["a", "s"])
    with pytest.raises(tp.GraphError, match=r"multiply node 'm': input 's' is integer data"):
        small_graph(setup).validate()


def test_an_elementwise_node_cannot_carry_a_learned_inverse():
    g = small_graph(lambda g: g.activation("m", "a"))
    with pytest.raises(tp.GraphError, match=r"node 'm' \(activation\) cannot carry an inverse"):
        g.add_inverse("m", of="a", weight="V")


def test_sizes_follow_the_inputs_through_chains_of_elementwise_nodes():
    def setup(g):
        g.scale("s1", "a", 2.0)
        g.activation("s2", "s1", act="sigmoid")
        g.multiply("m", ["s2", "b"])
    g = small_graph(setup)
    g.validate()
    assert g.param_shapes()["Wy"] == (2, 4)
    assert [g.node(v).size for v in ("s1", "s2", "m")] == [4, 4, 4]


def test_from_networkx_builds_the_new_kinds():
    G = nx.DiGraph()
    G.add_node("x", kind="input", size=3)
    G.add_node("a", kind="dense", inputs=("x",), size=3, weights=("Wa",), rules=("none",))
    G.add_node("s", kind="activation", inputs=("a",), act="sigmoid")
    G.add_node("n", kind="scale", inputs=("a",), factor=-1.0)
    G.add_node("m", kind="multiply", inputs=("s", "n"))
    G.add_node("y", kind="softmax_output", inputs=("m",), size=2, weights=("Wy",))
    G.add_node("l", kind="index_input", num_classes=2)
    G.add_node("E", kind="cross_entropy", inputs=("y", "l"))
    g = tp.Graph.from_networkx(G)
    g.validate()
    assert isinstance(g.node("m"), tp.Multiply) and g.node("m").size == 3
    assert isinstance(g.node("s"), tp.Activation) and isinstance(g.node("n"), tp.Scale)
    assert "Multiply('m', inputs=[s:gradient, n:gradient])" == repr(g.node("m"))


# ---------------------------------------------------------------- proposals in the engine
def gated_graph(act="tanh", rule="gradient", dtype="float64", factor=-0.5):
    """x -> dense a, b, c (width 4); s = act(a) (rule ``rule``); n = factor * b; m = s * n * c; softmax; CE."""
    g = tp.Graph("gated", dtype=dtype)
    g.input("x", 3)
    for v in "abc":
        g.dense(v, ["x"], 4, act="identity" if v == "a" else "tanh", weights=[f"W{v}"], bias=f"b{v}",
                rules=["none"])
    g.activation("s", "a", act=act, slope=0.3, rules=[rule])
    g.scale("n", "b", factor, rules=[rule])
    g.multiply("m", ["s", "n", "c"])
    g.softmax_output("y", ["m"], 3, weights=["Wy"], bias="by")
    g.index_input("l", 3)
    g.cross_entropy("E", "y", "l", reduction="sum")
    for grp, shp in g.param_shapes().items():
        g.init(grp, "normal:0.7" if len(shp) == 2 else "normal:0.2")
    return g


def run_gated(g, seed=0, B=5, alpha=0.3):
    eng = tp.Engine(g, alpha=alpha, seed=seed)
    rng = np.random.default_rng(seed)
    batch = {"x": rng.normal(size=(B, 3)), "l": rng.integers(0, 3, B)}
    eng.step(batch, apply=False)
    return eng


@pytest.mark.parametrize("act", ["identity", "tanh", "sigmoid", "relu", "leaky_relu"])
def test_forward_and_gradient_proposals_match_numpy(act):
    eng = run_gated(gated_graph(act))
    a, b, c = (eng.value(v) for v in "abc")
    s = act_ref(a, act, slope=0.3)
    n = -0.5 * b
    np.testing.assert_allclose(eng.value("s"), s, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(eng.value("n"), n, rtol=1e-13)
    np.testing.assert_allclose(eng.value("m"), s * n * c, rtol=1e-13, atol=1e-15)
    D = eng.displacement("m")
    assert np.abs(D).max() > 0
    # multiply: P_i = D * (product of the other inputs)
    np.testing.assert_allclose(eng.proposal("s", "m"), s + D * n * c, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(eng.proposal("n", "m"), n + D * s * c, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(eng.proposal("c", "m"), c + D * s * n, rtol=1e-13, atol=1e-15)
    # activation: P = act'(a) D_s ; scale: P = factor D_n
    deriv = {"identity": np.ones_like(a), "tanh": 1 - s ** 2, "sigmoid": s * (1 - s),
             "relu": (a > 0) * 1.0, "leaky_relu": np.where(a > 0, 1.0, 0.3)}[act]
    np.testing.assert_allclose(eng.proposal("a", "s"), a + deriv * eng.displacement("s"), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(eng.proposal("b", "n"), b - 0.5 * eng.displacement("n"), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("act", ke.INVERTIBLE)
@pytest.mark.parametrize("rule", ["dtp", "tp"])
def test_inverse_proposals_of_activation_and_scale_match_numpy(act, rule):
    eng = run_gated(gated_graph(act, rule=rule))
    a, b = eng.value("a"), eng.value("b")
    s_hat, n_hat = eng.target("s"), eng.target("n")
    assert np.abs(eng.displacement("s")).max() > 0
    g_s = lambda h: inverse_ref(h, act, slope=0.3)  # noqa: E731
    want_a = a + g_s(s_hat) - g_s(eng.value("s")) if rule == "dtp" else g_s(s_hat)
    np.testing.assert_allclose(eng.proposal("a", "s"), want_a, rtol=1e-10, atol=1e-12)
    want_b = b + (n_hat - eng.value("n")) / -0.5 if rule == "dtp" else n_hat / -0.5
    np.testing.assert_allclose(eng.proposal("b", "n"), want_b, rtol=1e-10, atol=1e-12)
    # the rule's own reference with the exact inverse as g agrees
    ref = tp.get_rule(rule).reference(a, eng.value("s"), s_hat, inverse=g_s)
    np.testing.assert_allclose(eng.proposal("a", "s"), ref, rtol=1e-10, atol=1e-12)


def test_float32_fast_tanh_activation_matches_float64():
    e32 = run_gated(gated_graph("tanh", dtype="float32"))
    e64 = run_gated(gated_graph("tanh", dtype="float64"))
    for v in ("s", "m"):
        np.testing.assert_allclose(e32.value(v), e64.value(v), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(e32.proposal("a", "s"), e64.proposal("a", "s"), rtol=1e-3, atol=1e-5)


# ---------------------------------------------------------------- backpropagation as a special case
@pytest.mark.parametrize("act, rule", [(a, "gradient") for a in ("identity", "tanh", "sigmoid", "relu", "leaky_relu")]
                         + [(a, "dtp") for a in ke.INVERTIBLE])
def test_gradient_special_case_matches_finite_differences(act, rule):
    """Every edge ``gradient`` (also a ``dtp`` graph turned into its BP baseline): local updates are alpha dL/dtheta."""
    g = gated_graph(act, rule=rule).with_rules("gradient")
    assert g.node("s").rules == ("gradient",)
    eng = tp.Engine(g, alpha=0.3, seed=4)
    rng = np.random.default_rng(4)
    batch = {"x": rng.normal(size=(5, 3)), "l": rng.integers(0, 3, 5)}
    assert_gradients_match(eng, batch, 0.3, sorted(g.param_shapes()))


def gated_recurrence(L=4, n=3, dtype="float64"):
    """A minimal gated unit unrolled over L steps: h_t = h_{t-1} + z_t * (c_t - h_{t-1}), all kinds mixed."""
    g = tp.Graph("mgu", dtype=dtype)
    g.input("h_0", n)
    for t in range(1, L + 1):
        g.input(f"x_{t}", 2)
        g.dense(f"a_{t}", [f"x_{t}", f"h_{t - 1}"], n, act="identity", weights=["Wzx", "Wzh"], bias="bz",
                rules=["none", "gradient"])
        g.activation(f"z_{t}", f"a_{t}", act="sigmoid")
        g.dense(f"c_{t}", [f"x_{t}", f"h_{t - 1}"], n, act="tanh", weights=["Wcx", "Wch"], bias="bc",
                rules=["none", "gradient"])
        g.scale(f"nh_{t}", f"h_{t - 1}", -1.0)
        g.add_node(f"e_{t}", [f"c_{t}", f"nh_{t}"])
        g.multiply(f"u_{t}", [f"z_{t}", f"e_{t}"])
        g.add_node(f"h_{t}", [f"h_{t - 1}", f"u_{t}"])
        g.dense(f"y_{t}", [f"h_{t}"], 2, act="identity", weights=["Wy"], bias="by", rules=["gradient"])
        g.input(f"t_{t}", 2)
        g.mse(f"E_{t}", f"y_{t}", f"t_{t}")
    for grp, shp in g.param_shapes().items():
        g.init(grp, "normal:0.6" if len(shp) == 2 else "normal:0.2")
    return g


def test_gated_recurrence_backprop_matches_finite_differences():
    g = gated_recurrence()
    eng = tp.Engine(g, alpha=0.5, seed=0)
    batch = random_batch(g, 3, seed=7)
    assert_gradients_match(eng, batch, 0.5, sorted(g.param_shapes()))


# ---------------------------------------------------------------- stacking
def replicated_gated(R=3, dtype="float64", rule="gradient", merge="linear"):
    """R copies of one gated branch sharing groups: the new kinds form stacks of R members."""
    g = tp.Graph("rep", dtype=dtype, merge=merge)
    for r in range(R):
        g.input(f"x{r}", 3)
        g.dense(f"a{r}", [f"x{r}"], 4, act="identity", weights=["Wa"], bias="ba", rules=["none"])
        g.dense(f"b{r}", [f"x{r}"], 4, weights=["Wb"], rules=["none"])
        g.activation(f"s{r}", f"a{r}", act="sigmoid", rules=[rule])
        g.scale(f"n{r}", f"b{r}", -2.0, rules=[rule])
        g.multiply(f"m{r}", [f"s{r}", f"n{r}", f"b{r}"])
        g.add_node(f"q{r}", [f"m{r}", f"a{r}"])
        g.softmax_output(f"y{r}", [f"q{r}"], 3, weights=["Wy"], bias="by")
        g.index_input(f"l{r}", 3)
        g.cross_entropy(f"E{r}", f"y{r}", f"l{r}")
    # a cross link that makes one consumer gather its inputs from a stack out of order
    g.multiply("cross", [f"m{R - 1}", "m0"])
    g.input("t", 4)
    g.mse("Ec", "cross", "t")
    for grp, shp in g.param_shapes().items():
        g.init(grp, "normal:0.6" if len(shp) == 2 else "normal:0.2")
    return g


@pytest.mark.parametrize("rule, merge", [("gradient", "linear"), ("dtp", "linear"), ("tp", "linear"),
                                         ("dtp", "mean"), ("dtp", "clipped")])
def test_replicated_gated_branches_stack_and_equal_the_unstacked_plan(rule, merge):
    g = replicated_gated(rule=rule, merge=merge)
    stacked, _ = assert_same_results(g, random_batch(g, 4, seed=3), randomise=0.6)
    widest = {}
    for st in stacked.stacks:
        widest[st.kind] = max(widest.get(st.kind, 0), st.m)
    assert widest["activation"] == widest["scale"] == widest["multiply"] == 3


def test_gated_recurrence_stacked_equals_unstacked():
    g = gated_recurrence(L=5)
    assert_same_results(g, random_batch(g, 3, seed=2), randomise=0.5)


@pytest.mark.parametrize("stacking", [True, False])
def test_buffer_bytes_counts_what_the_new_kinds_allocate(stacking):
    from tpgraph.buffers import Buffers, buffer_bytes

    for g in (replicated_gated(rule="dtp"), gated_recurrence(L=3)):
        plan = tp.compile_plan(g, stacking=stacking)
        for B in (1, 4):
            assert buffer_bytes(plan, B, g.dtype) == Buffers(plan, B, g.dtype).nbytes
