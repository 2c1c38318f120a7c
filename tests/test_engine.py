"""The engine at run time: bad data, determinism, float32, introspection, merges, divergence."""

import numpy as np
import pytest

import tpgraph as tp

L, B, N_IN, H, N_OUT = 4, 3, 5, 6, 3
XS = tuple(f"x_{t}" for t in range(1, L + 1))
LS = tuple(f"l_{t}" for t in range(1, L + 1))


def srn_batch(seed=0, B=B, L=L, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return {("h_0",): np.zeros((1, B, H), dtype=dtype),
            tuple(f"x_{t}" for t in range(1, L + 1)): rng.integers(0, N_IN, (L, B)),
            tuple(f"l_{t}" for t in range(1, L + 1)): rng.integers(0, N_OUT, (L, B))}


@pytest.fixture
def srn_engine():
    return tp.Engine(tp.build_srn(L, N_IN, H, N_OUT, dtype="float64"), alpha=0.5, seed=0)


def small_graph(dtype="float64", merge="linear", noise=0.0):
    """Two inputs (one integer), a shared group, an add, an inverse, two losses."""
    g = tp.Graph("small", dtype=dtype, merge=merge)
    g.input("x", 3)
    g.index_input("s", 4)
    g.dense("a", ["x", "s"], 5, act="tanh", weights=["Wx", "Ws"], bias="ba")
    g.dense("b", ["a", "s"], 5, act="sigmoid", weights=["Wab", "Ws"], bias="bb", rules=["dtp", "none"])
    g.add_inverse("b", of="a", weight="V", bias="c", noise=noise)
    g.dense("c1", ["b"], 5, act="leaky_relu", weights=["Wbb"], bias="bc")
    g.add_node("sum", ["a", "c1"])
    g.softmax_output("y", ["sum"], 3, weights=["Wy"], bias="by")
    g.index_input("label", 3)
    g.cross_entropy("E", "y", "label", reduction="sum")
    g.input("t", 5)
    g.mse("M", "b", "t")
    for k, shp in g.param_shapes().items():
        g.init(k, "normal:0.7" if len(shp) == 2 else "normal:0.2")
    return g


def small_batch(seed=0, B=B, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(B, 3)).astype(dtype), "s": rng.integers(0, 4, B),
            "label": rng.integers(0, 3, B), "t": rng.uniform(0, 1, (B, 5)).astype(dtype)}


# ---------------------------------------------------------------- bad data
def with_(batch, key, value):
    out = dict(batch)
    out[key] = value
    return out


def without(batch, key):
    out = dict(batch)
    del out[key]
    return out


BAD = {
    "real-wrong-width": (lambda b: with_(b, ("h_0",), np.zeros((1, B, H + 1))), ["'h_0'", str(H)]),
    "real-missing-batch-axis": (lambda b: with_(b, ("h_0",), np.zeros((1, H))), ["'h_0'"]),
    "floats-for-index": (lambda b: with_(b, XS, np.zeros((L, B))), ["'x_1'", "integer"]),
    "bools-for-index": (lambda b: with_(b, XS, np.zeros((L, B), bool)), ["'x_1'", "integer"]),
    "index-too-large": (lambda b: with_(b, LS, np.full((L, B), N_OUT)), ["'l_1'", str(N_OUT - 1)]),
    "index-negative": (lambda b: with_(b, XS, np.full((L, B), -1)), ["'x_1'", "-1"]),
    "index-2d": (lambda b: with_(b, XS, np.zeros((L, B, 1), int)), ["'x_1'"]),
    "nan": (lambda b: with_(b, ("h_0",), np.full((1, B, H), np.nan)), ["'h_0'", "NaN"]),
    "inf": (lambda b: with_(b, ("h_0",), np.full((1, B, H), -np.inf)), ["'h_0'", "inf"]),
    "strings": (lambda b: with_(b, ("h_0",), np.full((1, B, H), "a")), ["'h_0'"]),
    "complex": (lambda b: with_(b, ("h_0",), np.zeros((1, B, H), complex)), ["'h_0'"]),
    "missing-node": (lambda b: without(b, LS), ["l_1"]),
    "unknown-name": (lambda b: with_(b, "x_99", np.zeros(B, int)), ["'x_99'"]),
    "not-a-data-node": (lambda b: with_(b, "h_2", np.zeros((B, H))), ["'h_2'", "dense"]),
    "fed-twice": (lambda b: with_(b, "x_2", np.zeros(B, int)), ["x_2"]),
    "batch-size-mismatch": (lambda b: with_(b, LS, np.zeros((L, B + 2), int)), ["'l_1'", str(B + 2), str(B)]),
    "sequence-too-short": (lambda b: with_(b, LS, np.zeros((L - 1, B), int)), ["'l_1'", str(L), str(L - 1)]),
    "sequence-too-long": (lambda b: with_(b, XS, np.zeros((L + 1, B), int)), ["'x_1'", str(L), str(L + 1)]),
    "empty-batch": (lambda b: {k: v[:, :0] for k, v in b.items()}, ["batch size 0"]),
    "not-a-mapping": (lambda b: list(b.items()), ["mapping"]),
    "empty-mapping": (lambda b: {}, ["mapping"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_data_is_a_data_error_naming_the_input(srn_engine, case):
    make, fragments = BAD[case]
    with pytest.raises(tp.DataError) as info:
        srn_engine.feed(make(srn_batch()))
    for f in fragments:
        assert f in str(info.value), f"{f!r} not in {info.value}"
    with pytest.raises(tp.DataError):
        srn_engine.step(make(srn_batch()))
    assert srn_engine.step_count == 0


def test_a_refused_batch_changes_nothing(srn_engine):
    """Validation happens before any copy: a bad batch leaves the last good one in place."""
    good = srn_batch(0)
    loss = srn_engine.forward(good).loss
    other = srn_batch(1)
    bad = dict(other)
    bad[LS] = np.full((L, B), 99)  # the x's of ``other`` are fine, its labels are not
    with pytest.raises(tp.DataError):
        srn_engine.feed(bad)
    assert srn_engine.forward().loss == loss
    assert srn_engine.forward(other).loss != loss


def test_stacked_feed_of_mismatched_lengths_between_inputs_and_labels():
    """A model-level batch whose labels are one step shorter than its inputs."""
    model = tp.SRN(N_IN, H, N_OUT, dtype="float64")
    rng = np.random.default_rng(0)
    with pytest.raises(tp.DataError, match=rf"\[{L}, {B}\]"):
        model.train_step(rng.integers(0, N_IN, (L, B)), rng.integers(0, N_OUT, (L - 1, B)))


def test_unstacked_and_stacked_feeds_agree(srn_engine):
    batch = srn_batch(3)
    loss = srn_engine.forward(batch).loss
    flat = {"h_0": batch[("h_0",)][0]}
    flat.update({x: batch[XS][t] for t, x in enumerate(XS)})
    flat.update({lab: batch[LS][t] for t, lab in enumerate(LS)})
    assert srn_engine.forward(flat).loss == loss
    # a stacked key in another order than the stack feeds each node its own row
    rev = {("h_0",): batch[("h_0",)], XS[::-1]: batch[XS][::-1], LS: batch[LS]}
    assert srn_engine.forward(rev).loss == loss


def test_empty_stacked_key(srn_engine):
    with pytest.raises(tp.DataError):
        srn_engine.feed(with_(srn_batch(), (), np.zeros((0, B))))


def test_ragged_data(srn_engine):
    with pytest.raises(tp.DataError, match="h_0"):
        srn_engine.feed(with_(srn_batch(), "h_0", [[0.0] * H, [0.0] * (H - 1), [0.0] * H]))


def test_no_batch_yet():
    eng = tp.Engine(small_graph())
    with pytest.raises(tp.DataError):
        eng.step()
    with pytest.raises(tp.DataError):
        eng.value("a")


# ---------------------------------------------------------------- determinism
def run_steps(graph, batches, seed, **kw):
    eng = tp.Engine(graph, seed=seed, **kw)
    losses = [eng.step(b).loss for b in batches]
    return eng, losses


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_same_seed_same_bits_small_graph(noise):
    batches = [small_batch(i) for i in range(4)]
    e1, l1 = run_steps(small_graph(noise=noise), batches, seed=11, optimizer="adam", lr=0.01)
    e2, l2 = run_steps(small_graph(noise=noise), batches, seed=11, optimizer="adam", lr=0.01)
    assert l1 == l2
    for k in e1.params:
        np.testing.assert_array_equal(e1.params[k], e2.params[k], err_msg=k)
    assert not np.array_equal(e1.params["V"], small_graph().init_params(11)["V"])


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_same_seed_same_bits_srn(noise):
    g1 = tp.build_srn(L, N_IN, H, N_OUT, noise=noise)  # float32, the fast path
    g2 = tp.build_srn(L, N_IN, H, N_OUT, noise=noise)
    batches = [srn_batch(i, dtype=np.float32) for i in range(4)]
    e1, l1 = run_steps(g1, batches, seed=5, optimizer="adam", lr=0.01, alpha=0.5)
    e2, l2 = run_steps(g2, batches, seed=5, optimizer="adam", lr=0.01, alpha=0.5)
    assert l1 == l2
    for k in e1.params:
        np.testing.assert_array_equal(e1.params[k], e2.params[k], err_msg=k)


def test_the_seed_drives_the_noise():
    """With noise, two engines that differ only in the seed of the noise (same parameters) part ways."""
    g = small_graph(noise=0.3)
    p = g.init_params(0)
    batches = [small_batch(i) for i in range(2)]
    e1 = tp.Engine(g, p.copy(), seed=1, lr=0.05)
    e2 = tp.Engine(g, p.copy(), seed=2, lr=0.05)
    for b in batches:
        e1.step(b)
        e2.step(b)
    assert not np.array_equal(e1.params["V"], e2.params["V"])
    # without noise the seed of the engine does not matter when the parameters are given
    g0 = small_graph(noise=0.0)
    e3 = tp.Engine(g0, p.copy(), seed=1, lr=0.05)
    e4 = tp.Engine(g0, p.copy(), seed=2, lr=0.05)
    for b in batches:
        e3.step(b)
        e4.step(b)
    for k in p:
        np.testing.assert_array_equal(e3.params[k], e4.params[k])


# ---------------------------------------------------------------- float32
def test_float32_runs_and_stays_finite():
    g = tp.build_srn(L, N_IN, H, N_OUT, noise=0.1)
    eng = tp.Engine(g, alpha=0.5, optimizer="adam", lr=0.01, seed=0)
    first = None
    for i in range(30):
        res = eng.step(srn_batch(i % 3, dtype=np.float32))
        first = res.loss if first is None else first
        assert np.isfinite(res.loss)
    for k, v in eng.params.items():
        assert v.dtype == np.float32 and np.all(np.isfinite(v)), k
    assert eng.value("h_2").dtype == np.float32
    assert eng.target("h_2").dtype == np.float32
    assert eng.grads["W_h"].dtype == np.float32
    assert all(np.isfinite(v) for v in eng.local_losses().values())
    assert eng.forward(srn_batch(0, dtype=np.float32)).loss < first  # and it learns


def test_float32_agrees_with_float64():
    """Same parameters, same batch: the float32 engine (fast tanh) is within float32 accuracy of float64."""
    g64 = tp.build_srn(L, N_IN, H, N_OUT, dtype="float64")
    g32 = tp.build_srn(L, N_IN, H, N_OUT, dtype="float32")
    e64, e32 = tp.Engine(g64, alpha=0.5, seed=1), tp.Engine(g32, alpha=0.5, seed=1)
    rng = np.random.default_rng(3)
    for k in e64.params:
        w = rng.normal(0, 0.5, e64.params[k].shape)
        e64.params[k] = w
        e32.params[k] = w
    r64 = e64.step(srn_batch(2), apply=False)
    r32 = e32.step(srn_batch(2, dtype=np.float32), apply=False)
    assert r32.loss == pytest.approx(r64.loss, rel=1e-5)
    for t in range(1, L + 1):
        np.testing.assert_allclose(e32.target(f"h_{t}"), e64.target(f"h_{t}"), atol=1e-5)
    for k in e64.grads:
        np.testing.assert_allclose(e32.grads[k], e64.grads[k], atol=1e-5, rtol=1e-4, err_msg=k)


def test_float32_with_float64_data_is_cast():
    eng = tp.Engine(small_graph("float32"))
    res = eng.step(small_batch(0, dtype=np.float64))
    assert np.isfinite(res.loss)
    assert eng.value("x").dtype == np.float32


# ---------------------------------------------------------------- introspection
def deriv(name, h, slope=0.01):
    return {"tanh": 1 - h ** 2, "sigmoid": h * (1 - h), "identity": np.ones_like(h),
            "leaky_relu": np.where(h > 0, 1.0, slope), "relu": (h > 0) * 1.0}[name]


def one_hot(eng, name, n):
    return np.eye(n)[eng.value(name)]


def test_introspection_is_consistent():
    g = small_graph()
    eng = tp.Engine(g, alpha=0.4, optimizer="sgd", lr=0.05, seed=3)
    batch = small_batch(4)
    before = {k: v.copy() for k, v in eng.params.items()}
    res = eng.step(batch)

    # losses: per-sample values reduce to the step's losses
    assert res.loss == pytest.approx(eng.value("E").sum() + eng.value("M").mean(), rel=1e-12)
    assert set(eng.losses()) == {"E", "M"}

    for n in g.nodes:
        if n.is_data or n.is_loss:
            continue
        h, t, d = eng.value(n.name), eng.target(n.name), eng.displacement(n.name)
        np.testing.assert_allclose(t, h + d, rtol=0, atol=1e-15)
        props = eng.proposals(n.name)
        # the linear merge: the displacements of all proposals add up
        np.testing.assert_allclose(d, sum((p - h for p in props.values()), np.zeros_like(h)), atol=1e-13)
        assert eng.local_loss(n.name) == pytest.approx(0.5 * np.sum(d ** 2), rel=1e-12)
    assert set(eng.proposals("a")) == {"b", "sum"}
    assert set(eng.proposals("b")) == {"c1", "M"}
    local = eng.local_losses()
    for name in ("a", "b", "c1", "y"):
        assert local[name] == pytest.approx(eng.local_loss(name), rel=1e-12)
    assert local["a"] > 0

    # gradient edges: tau = h_u + J^T (h_hat_v - h_v)
    hv = eng.value("c1")
    delta = eng.displacement("c1") * deriv("leaky_relu", hv)
    np.testing.assert_allclose(eng.proposal("b", "c1"), eng.value("b") + delta @ before["Wbb"], atol=1e-13)
    # an add's Jacobian is the identity: it passes its displacement through to each input
    np.testing.assert_allclose(eng.proposal("a", "sum"), eng.value("a") + eng.displacement("sum"), atol=1e-13)
    np.testing.assert_allclose(eng.proposal("c1", "sum"), eng.value("c1") + eng.displacement("sum"), atol=1e-13)
    # the loss proposes h - alpha dL/dh
    np.testing.assert_allclose(eng.proposal("b", "M"), eng.value("b") - 0.4 * (eng.value("b") - batch["t"]) / B,
                               atol=1e-13)
    # cross-entropy with the sum convention: y - alpha (softmax(y) - onehot(label))
    z = eng.value("y")
    prob = np.exp(z - z.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    np.testing.assert_allclose(eng.proposal("y", "E"), z - 0.4 * (prob - np.eye(3)[batch["label"]]), atol=1e-13)
    # dtp edge: tau = h_a + g(h_hat_b) - g(h_b), g(h) = tanh(V h + Ws s + c) (others enter through forward Ws)
    S = one_hot(eng, "s", 4)

    def inv(hb):
        return np.tanh(hb @ before["V"].T + S @ before["Ws"].T + before["c"])

    np.testing.assert_allclose(eng.proposal("a", "b"),
                               eng.value("a") + inv(eng.target("b")) - inv(eng.value("b")), atol=1e-12)

    # local gradients from the introspected values and targets; Ws is shared by a and b
    def local_delta(name, act):
        return (eng.value(name) - eng.target(name)) * deriv(act, eng.value(name))

    da, db = local_delta("a", "tanh"), local_delta("b", "sigmoid")
    np.testing.assert_allclose(eng.grads["Wx"], da.T @ eng.value("x"), atol=1e-12)
    np.testing.assert_allclose(eng.grads["Ws"], da.T @ S + db.T @ S, atol=1e-12)
    np.testing.assert_allclose(eng.grads["Wab"], db.T @ eng.value("a"), atol=1e-12)
    np.testing.assert_allclose(eng.grads["bb"], db.sum(0), atol=1e-12)
    # the inverse's reconstruction gradient and loss (no noise): g(f(a)) against a
    ga = inv(eng.value("b"))
    dg = (ga - eng.value("a")) * (1 - ga ** 2)
    np.testing.assert_allclose(eng.grads["V"], dg.T @ eng.value("b"), atol=1e-12)
    np.testing.assert_allclose(eng.grads["c"], dg.sum(0), atol=1e-12)
    assert eng.reconstruction_losses()[("b", "a")] == pytest.approx(0.5 * np.sum((ga - eng.value("a")) ** 2), rel=1e-12)

    # updates are the parameter change, and SGD's change is -lr * grad
    for k in eng.params:
        np.testing.assert_allclose(eng.updates[k], eng.params[k] - before[k], rtol=0, atol=1e-15)
        np.testing.assert_allclose(eng.updates[k], -0.05 * eng.grads[k], rtol=1e-12, atol=1e-15)
    assert any(np.any(u != 0) for u in eng.updates.values())


def test_introspection_results_are_copies(srn_engine):
    srn_engine.step(srn_batch(), apply=False)
    v = srn_engine.value("h_2")
    v[:] = 99
    assert not np.any(srn_engine.value("h_2") == 99)
    t = srn_engine.target("h_2")
    t[:] = 99
    assert not np.any(srn_engine.target("h_2") == 99)


def test_no_proposal_no_displacement():
    """A node nobody proposes to keeps its forward value as target; x_t -> h_t (rule none) carries no credit."""
    g = tp.build_srn(L, N_IN, H, N_OUT, dtype="float64", many_to_many=False)
    eng = tp.Engine(g, alpha=0.5)
    batch = srn_batch(1)
    batch[(f"l_{L}",)] = batch.pop(LS)[-1:]
    eng.step(batch, apply=False)
    assert np.any(eng.displacement(f"h_{L}") != 0)
    np.testing.assert_array_equal(eng.target("h_0"), eng.value("h_0"))
    with pytest.raises(tp.GraphError, match="x_1"):
        eng.proposal("x_1", "h_1")
    with pytest.raises(tp.GraphError, match="no edge"):
        eng.proposal("h_1", "h_3")


def test_apply_false_changes_nothing(srn_engine):
    before = {k: v.copy() for k, v in srn_engine.params.items()}
    srn_engine.step(srn_batch(), apply=False)
    assert srn_engine.step_count == 0
    for k in before:
        np.testing.assert_array_equal(srn_engine.params[k], before[k])
    assert any(np.any(g != 0) for g in srn_engine.grads.values())


def test_update_flags():
    eng = tp.Engine(small_graph(), lr=0.1)
    before = {k: v.copy() for k, v in eng.params.items()}
    eng.step(small_batch(), update_forward=False)  # the warm-up: only the inverse moves
    moved = {k for k in before if not np.array_equal(eng.params[k], before[k])}
    assert moved == {"V", "c"}
    before = {k: v.copy() for k, v in eng.params.items()}
    eng.step(small_batch(), update_inverse=False)
    moved = {k for k in before if not np.array_equal(eng.params[k], before[k])}
    assert "V" not in moved and "c" not in moved and "Wx" in moved
    assert not eng.updates["V"].any()


def test_group_options_scale_and_frozen():
    eng = tp.Engine(small_graph(), lr=0.1, groups={"Wy": {"scale": 2.0, "lr": 0.01}, "Wx": {"frozen": True}})
    before = {k: v.copy() for k, v in eng.params.items()}
    eng.step(small_batch())
    np.testing.assert_allclose(eng.params["Wy"] - before["Wy"], -0.01 * 2.0 * eng.grads["Wy"], rtol=1e-12)
    np.testing.assert_array_equal(eng.params["Wx"], before["Wx"])
    assert eng.grads["Wx"].any()
    with pytest.raises(tp.ConfigError, match="nope"):
        tp.Engine(small_graph(), groups={"nope": {"lr": 1.0}})
    with pytest.raises(tp.ConfigError, match="'Wy'.*bogus"):
        tp.Engine(small_graph(), groups={"Wy": {"bogus": 1.0}})


# ---------------------------------------------------------------- merges
def test_registered_merge_is_called_and_used():
    calls = []

    def double(h, proposals):
        calls.append((h.shape, len(proposals)))
        return h + 2.0 * sum(p - h for p in proposals)

    tp.register_merge("test_engine_double", double, overwrite=True)
    g = tp.build_srn(L, N_IN, H, N_OUT, dtype="float64", merge="test_engine_double")
    eng = tp.Engine(g, alpha=0.5, seed=0)
    ref = tp.Engine(tp.build_srn(L, N_IN, H, N_OUT, dtype="float64"), alpha=0.5, seed=0)
    batch = srn_batch(2)
    eng.step(batch, apply=False)
    ref.step(batch, apply=False)
    assert calls, "the registered merge was never called"
    assert all(shape == (B, H) or shape == (B, N_OUT) for shape, _ in calls)
    assert max(n for _, n in calls) == 2  # h_t (t < L) merges its output's and its successor's proposals
    for t in range(1, L + 1):
        name = f"h_{t}"
        h = eng.value(name)
        props = eng.proposals(name)
        np.testing.assert_allclose(eng.target(name), double(h, list(props.values())), rtol=1e-12, atol=1e-14)
    # the result is used: targets (and so gradients) differ from the linear merge's
    assert not np.allclose(eng.target("h_1"), ref.target("h_1"))
    assert not np.allclose(eng.grads["W_h"], ref.grads["W_h"])
    assert "test_engine_double" in tp.known_merges()


def test_node_level_merge_overrides_the_graph():
    tp.register_merge("test_engine_first", lambda h, props: props[0].copy(), overwrite=True)
    g = small_graph()
    g.node("a").merge = "test_engine_first"
    eng = tp.Engine(g, alpha=0.5)
    eng.step(small_batch(), apply=False)
    props = eng.proposals("a")
    assert len(props) == 2
    first = eng.target("a")
    assert any(np.allclose(first, p, atol=1e-14) for p in props.values())
    h = eng.value("a")
    assert not np.allclose(first, h + sum(p - h for p in props.values()))


def test_mean_merge_averages_displacements():
    eng = tp.Engine(small_graph(merge="mean"), alpha=0.5)
    eng.step(small_batch(), apply=False)
    for name in ("a", "b"):
        h = eng.value(name)
        props = list(eng.proposals(name).values())
        assert len(props) == 2
        np.testing.assert_allclose(eng.target(name), h + sum(p - h for p in props) / 2, atol=1e-13)


def test_merge_returning_the_wrong_shape_names_the_node():
    tp.register_merge("test_engine_bad_shape", lambda h, props: h[:, :1], overwrite=True)
    g = small_graph()
    g.node("b").merge = "test_engine_bad_shape"
    eng = tp.Engine(g)
    with pytest.raises(tp.TPGraphError, match="'b'"):
        eng.step(small_batch())


# ---------------------------------------------------------------- divergence
def tiny_linear():
    g = tp.Graph("tiny", dtype="float64")
    g.input("x", 3)
    g.input("t", 2)
    g.dense("h", ["x"], 4, act="identity", weights=["W1"], bias="b1")
    g.dense("o", ["h"], 2, act="identity", weights=["W2"])
    g.mse("L", "o", "t")
    return g


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_absurd_learning_rate_raises_divergence_naming_step_and_quantity():
    g = tiny_linear()
    eng = tp.Engine(g, optimizer="sgd", lr=1e6)
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(4, 3)), "t": rng.normal(size=(4, 2))}
    calls = 0
    with pytest.raises(tp.DivergenceError) as info:
        for _ in range(200):
            calls += 1
            eng.step(batch)
    exc = info.value
    assert exc.step == calls, (exc.step, calls)
    assert f"step {calls}" in str(exc)
    assert isinstance(exc.quantity, str) and exc.quantity
    names = {"loss"} | set(g.param_shapes()) | {n.name for n in g.nodes}
    assert any(n in exc.quantity for n in names), exc.quantity
    assert any(n in str(exc) for n in names - {"loss"}) or "loss" in str(exc)


def test_divergence_on_a_nan_loss():
    """A finite batch but non-finite parameters (written behind the store's back) stop at once."""
    eng = tp.Engine(tiny_linear(), lr=0.01)
    eng.params["W2"][0, 0] = np.inf
    batch = {"x": np.ones((2, 3)), "t": np.zeros((2, 2))}
    with pytest.raises(tp.DivergenceError) as info:
        eng.step(batch)
    assert info.value.step == 1
    assert info.value.quantity


def test_check_finite_false_lets_it_run():
    eng = tp.Engine(tiny_linear(), optimizer="sgd", lr=1e6, check_finite=False)
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(4, 3)), "t": rng.normal(size=(4, 2))}
    with np.errstate(all="ignore"):
        for _ in range(60):
            eng.step(batch)
    assert not all(np.all(np.isfinite(v)) for v in eng.params.values())


def test_sane_learning_rate_does_not_diverge():
    eng = tp.Engine(tiny_linear(), optimizer="sgd", lr=0.05, alpha=1.0)
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(4, 3)), "t": rng.normal(size=(4, 2))}
    first = eng.step(batch).loss
    for _ in range(50):
        last = eng.step(batch).loss
    assert last < first


# ---------------------------------------------------------------- per-loss alpha, several inverses
def test_a_loss_alpha_overrides_the_engine_alpha():
    g = tiny_linear()
    g.node("L").alpha = 0.25
    eng = tp.Engine(g, alpha=3.0)
    batch = {"x": np.ones((2, 3)), "t": np.zeros((2, 2))}
    eng.step(batch, apply=False)
    o = eng.value("o")
    np.testing.assert_allclose(eng.proposal("o", "L"), o - 0.25 * o / 2, atol=1e-14)


def two_inverse_graph():
    g = tp.Graph("two_inverses", dtype="float64")
    g.input("x", 3)
    g.dense("a1", ["x"], 4, weights=["W1"])
    g.dense("a2", ["x"], 4, weights=["W2"])
    g.dense("b", ["a1", "a2"], 4, weights=["U1", "U2"], rules=["dtp", "dtp"])
    g.add_inverse("b", of="a1", weight="V1", others="none")
    g.add_inverse("b", of="a2", weight="V2", others="none")
    g.input("t", 4)
    g.mse("L", "b", "t")
    return g


def test_two_inverses_on_one_node_are_both_trained():
    eng = tp.Engine(two_inverse_graph(), seed=0)
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(3, 3)), "t": rng.normal(size=(3, 4))}
    P = {k: v.copy() for k, v in eng.params.items()}
    eng.step(batch, apply=False)
    hb = eng.value("b")
    for a, V in (("a1", "V1"), ("a2", "V2")):
        ga = np.tanh(hb @ P[V].T)
        dg = (ga - eng.value(a)) * (1 - ga ** 2)
        np.testing.assert_allclose(eng.grads[V], dg.T @ hb, atol=1e-12, err_msg=V)


def test_reconstruction_losses_count_every_inverse():
    eng = tp.Engine(two_inverse_graph(), seed=0)
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(3, 3)), "t": rng.normal(size=(3, 4))}
    P = {k: v.copy() for k, v in eng.params.items()}
    eng.step(batch, apply=False)
    hb = eng.value("b")
    want = sum(0.5 * np.sum((np.tanh(hb @ P[V].T) - eng.value(a)) ** 2) for a, V in (("a1", "V1"), ("a2", "V2")))
    assert sum(eng.reconstruction_losses().values()) == pytest.approx(want, rel=1e-12)
    assert eng.reconstruction_loss() == pytest.approx(want / 3, rel=1e-12)


# ---------------------------------------------------------------- memory
def test_a_batch_size_too_large_for_the_memory_limit_is_refused_before_allocating():
    from tpgraph.buffers import Buffers

    eng = tp.Engine(tp.build_srn(50, 4, 16, 4), memory_limit="200K")
    small, large = eng.estimate_memory(2), eng.estimate_memory(64)
    assert small.total < 200 * 1024 < large.total
    rng = np.random.default_rng(0)

    def batch(B):
        return {("h_0",): np.zeros((1, B, 16)), tuple(f"x_{t}" for t in range(1, 51)): rng.integers(0, 4, (50, B)),
                tuple(f"l_{t}" for t in range(1, 51)): rng.integers(0, 4, (50, B))}

    eng.step(batch(2))
    assert sum(eng.buf.nbytes.values()) <= small.total  # the estimate covers what was allocated
    with pytest.raises(tp.MemoryLimitError) as exc:
        eng.step(batch(64))
    msg = str(exc.value)
    assert "graph 'srn_L50'" in msg and "batch size 64" in msg and str(large).split(" (")[0] in msg \
        and "limit of 200.0 KiB" in msg, msg
    assert set(eng._buffers) == {2} and eng.buf.B == 2  # nothing allocated for 64; the old batch is intact
    assert isinstance(eng.buf, Buffers)
    with pytest.raises(tp.ConfigError, match="memory_limit"):
        tp.Engine(tp.build_srn(2, 4, 16, 4), memory_limit="much")
