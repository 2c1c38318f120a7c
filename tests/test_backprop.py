"""Backpropagation is a special case of the engine: check it against finite differences.

With every credit edge ``gradient``, the linear merge and ``alpha`` the loss
step, each local gradient is ``alpha`` times the exact gradient of the summed
loss. Checked in float64 with central differences on the SRN and on a random
multi-branch DAG with shared parameter groups.
"""

import numpy as np
import pytest

import tpgraph as tp


def total_loss(eng, batch):
    return eng.forward(batch).loss


def finite_difference(eng, batch, group, eps=1e-6, n_entries=12, seed=0):
    """Central differences of the total loss for a sample of entries of ``group``."""
    p = eng.params[group]
    rng = np.random.default_rng(seed)
    flat = p.reshape(-1)
    idx = rng.choice(flat.size, size=min(n_entries, flat.size), replace=False)
    out = {}
    for i in idx:
        old = flat[i]
        flat[i] = old + eps
        up = total_loss(eng, batch)
        flat[i] = old - eps
        down = total_loss(eng, batch)
        flat[i] = old
        out[int(i)] = (up - down) / (2 * eps)
    return out


def assert_gradients_match(eng, batch, alpha, groups):
    eng.step(batch, apply=False)
    grads = {g: eng.grads[g].copy() / alpha for g in groups}
    for g in groups:
        fd = finite_difference(eng, batch, g)
        got = grads[g].reshape(-1)
        num = np.array(list(fd.values()))
        ana = got[list(fd.keys())]
        scale = max(np.abs(num).max(), 1e-8)
        rel = np.abs(ana - num).max() / scale
        assert rel < 1e-5, f"group {g}: relative error {rel:.2e}\nanalytic {ana}\nnumeric {num}"


@pytest.mark.parametrize("many_to_many", [True, False])
def test_srn_bptt_matches_finite_differences(many_to_many):
    model = tp.SRN(5, 7, 4, method="bptt", dtype="float64", seed=3, many_to_many=many_to_many)
    L, B = 6, 4
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, (L, B))
    y = rng.integers(0, 4, (L, B))
    # make the weights less trivial than the init
    for g in model.params:
        model.params[g] = model.params[g] + rng.normal(0, 0.3, model.params[g].shape)
    eng = model.engine(L)
    _, batch = model._batch(x, y)
    assert_gradients_match(eng, batch, 1.0, ["W_xh", "W_h", "b_h", "W_hy", "b_y"])


@pytest.mark.parametrize("many_to_many", [True, False])
def test_regression_srn_bptt_matches_finite_differences(many_to_many):
    """Real inputs, a linear output and squared errors (the adding problem's SRN)."""
    model = tp.SRN(2, 7, 3, method="bptt", dtype="float64", seed=3, many_to_many=many_to_many,
                   inputs="real", output="linear")
    L, B = 6, 4
    rng = np.random.default_rng(1)
    x = rng.normal(size=(L, B, 2))
    y = rng.normal(size=(L if many_to_many else 1, B, 3))
    for g in model.params:
        model.params[g] = model.params[g] + rng.normal(0, 0.3, model.params[g].shape)
    eng = model.engine(L)
    _, batch = model._batch(x, y)
    assert_gradients_match(eng, batch, 1.0, ["W_xh", "W_h", "b_h", "W_hy", "b_y"])


@pytest.mark.parametrize("alpha", [1.0, 0.37])
def test_local_updates_are_alpha_times_gradient(alpha):
    g = tp.build_srn(4, 3, 5, 3, dtype="float64").with_rules("gradient")
    eng = tp.Engine(g, alpha=alpha, seed=2)
    rng = np.random.default_rng(0)
    batch = {("h_0",): np.zeros((1, 2, 5)), tuple(f"x_{t}" for t in range(1, 5)): rng.integers(0, 3, (4, 2)),
             tuple(f"l_{t}" for t in range(1, 5)): rng.integers(0, 3, (4, 2))}
    assert_gradients_match(eng, batch, alpha, ["W_xh", "W_h", "b_h", "W_hy", "b_y"])


def random_dag(seed, dtype="float64"):
    """A random multi-branch DAG: dense layers with 1-3 inputs, adds, shared groups, two losses."""
    rng = np.random.default_rng(seed)
    g = tp.Graph(f"random{seed}", dtype=dtype)
    g.input("x", 4)
    g.index_input("s", 3)
    sizes = {"x": 4, "s": 3}
    real = ["x"]
    acts = ["tanh", "sigmoid", "leaky_relu", "identity", "relu"]
    for i in range(7):
        name = f"n{i}"
        if i >= 2 and rng.random() < 0.25:
            # an add of two same-size real nodes if possible
            by_size = {}
            for r in real:
                by_size.setdefault(sizes[r], []).append(r)
            pairs = [v for v in by_size.values() if len(v) >= 2]
            if pairs:
                a, b = rng.choice(pairs[0], size=2, replace=False)
                g.add_node(name, [str(a), str(b)])
                sizes[name] = sizes[str(a)]
                real.append(name)
                continue
        k = int(rng.integers(1, min(3, len(real)) + 1))
        ins = [str(v) for v in rng.choice(real, size=k, replace=False)]
        if rng.random() < 0.4:
            ins.append("s")
        size = int(rng.choice([3, 5]))
        # share a group when an earlier node had the same (out, in) shape
        weights = []
        for u in ins:
            weights.append(f"W_{size}x{sizes[u]}" if rng.random() < 0.6 else f"W_{name}_{u}")
        g.dense(name, ins, size, act=str(rng.choice(acts)), weights=weights,
                bias=f"b_{size}" if rng.random() < 0.5 else f"b_{name}")
        sizes[name] = size
        real.append(name)
    # two heads: a softmax output and an MSE on another node
    g.softmax_output("out", [real[-1], real[-2]], 3, weights=["W_out_a", "W_out_b"], bias="b_out")
    g.index_input("label", 3)
    g.cross_entropy("ce", "out", "label", reduction="sum")
    g.input("t", sizes[real[-3]])
    g.mse("sq", real[-3], "t", reduction="mean")
    for grp, shp in g.param_shapes().items():
        g.init(grp, "normal:0.5" if len(shp) == 2 else "normal:0.1")
    return g


@pytest.mark.parametrize("seed", range(6))
def test_random_dag_backprop_matches_finite_differences(seed):
    g = random_dag(seed).with_rules("gradient")
    eng = tp.Engine(g, alpha=0.5, seed=seed)
    rng = np.random.default_rng(seed + 100)
    B = 3
    batch = {"x": rng.normal(size=(B, 4)), "s": rng.integers(0, 3, B), "label": rng.integers(0, 3, B),
             "t": rng.normal(size=(B, g.node("t").size))}
    groups = sorted(g.param_shapes())
    assert_gradients_match(eng, batch, 0.5, groups)


def test_random_dag_shares_groups():
    """The DAG generator really does produce shared groups (else the test above proves less)."""
    shared = 0
    for seed in range(6):
        g = random_dag(seed)
        users = {}
        for n in g.nodes:
            for w in getattr(n, "weights", ()):
                users[w] = users.get(w, 0) + 1
        shared += sum(1 for c in users.values() if c > 1)
    assert shared >= 3
