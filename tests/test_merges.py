"""Merge strategies (tpgraph.merges): weighted by source, norm-clipped, compiled user merges.

Each is checked against a plain-NumPy SRN written from the definitions
(forward Eqs. 14-15, step targets Eq. 20, DTP Eq. 19 or the gradient rule,
then ``h_hat_t = h_t + merge(displacements)``), through the chain's scan,
with both product paths of the scan kernels.
"""

import numpy as np
import pytest

import tpgraph as tp
from tpgraph.merges import JitMerge, Weighted, clip_sum, get_merge, merge_kind, register_merge, srn_step_weight


def numpy_srn(P, x, y, alpha, n_in, n_out, credit, merge, ymerge=None):
    """Targets and the W_h local gradient; ``merge(h, disps, t, sources)`` -> merged displacement.

    ``ymerge(disp, t)``: the merge of the output ``y_t``'s one proposal, from its loss (default: itself).
    """
    L, B = x.shape
    X, Y = np.eye(n_in)[x], np.eye(n_out)[y]
    h = [np.zeros((B, P["W_h"].shape[0]))]
    for t in range(L):
        h.append(np.tanh(X[t] @ P["W_xh"].T + h[-1] @ P["W_h"].T + P["b_h"]))
    z = [h[t + 1] @ P["W_hy"].T + P["b_y"] for t in range(L)]
    p = [np.exp(zz - zz.max(1, keepdims=True)) for zz in z]
    p = [pp / pp.sum(1, keepdims=True) for pp in p]
    ymerge = ymerge or (lambda disp, t: disp)
    e = [ymerge(-alpha * ((p[t] - Y[t]) / B), t + 1) @ P["W_hy"] for t in range(L)]

    def g(hh, t):
        return np.tanh(hh @ P["V_h"].T + X[t - 1] @ P["W_xh"].T + P["c_h"])

    hat = [None] * (L + 1)
    hat[L] = h[L] + merge(h[L], [e[L - 1]], L, [f"y_{L}"])
    for t in range(L, 1, -1):
        if credit == "dtp":
            prop = g(hat[t], t) - g(h[t], t)
        else:
            prop = ((1 - h[t] ** 2) * (hat[t] - h[t])) @ P["W_h"]
        hat[t - 1] = h[t - 1] + merge(h[t - 1], [e[t - 2], prop], t - 1, [f"y_{t - 1}", f"h_{t}"])
    gW = sum(((h[t] - hat[t]) * (1 - h[t] ** 2)).T @ h[t - 1] for t in range(1, L + 1))
    return hat, gW


def run(merge, credit="dtp", blas="auto", L=6, B=4, H=5, n_in=3, n_out=3, alpha=0.6, seed=0):
    g = tp.build_srn(L, n_in, H, n_out, dtype="float64", merge=merge, credit=credit)
    eng = tp.Engine(g, alpha=alpha, seed=seed, blas=blas)
    rng = np.random.default_rng(seed + 1)
    for k in eng.params:
        eng.params[k] = rng.normal(0, 0.5, eng.params[k].shape)
    P = {k: v.copy() for k, v in eng.params.items()}
    x, y = rng.integers(0, n_in, (L, B)), rng.integers(0, n_out, (L, B))
    batch = {("h_0",): np.zeros((1, B, H)), tuple(f"x_{t}" for t in range(1, L + 1)): x,
             tuple(f"l_{t}" for t in range(1, L + 1)): y}
    eng.step(batch, apply=False)
    return eng, P, x, y


def check(merge_name, reference, credit="dtp", blas="auto", alpha=0.6, ymerge=None):
    eng, P, x, y = run(merge_name, credit, blas, alpha=alpha)
    hat, gW = numpy_srn(P, x, y, alpha, 3, 3, credit, reference, ymerge)
    for t in range(1, 7):
        np.testing.assert_allclose(eng.target(f"h_{t}"), hat[t], rtol=1e-10, atol=1e-13, err_msg=f"h_{t}")
    np.testing.assert_allclose(eng.grads["W_h"], gW, rtol=1e-10, atol=1e-13)
    return eng


def clip_rows(d, c):
    n = np.linalg.norm(d, axis=1, keepdims=True)
    return d * np.minimum(1.0, c / np.maximum(n, 1e-300))


# ---------------------------------------------------------------- weighted by source
@pytest.mark.parametrize("credit", ["dtp", "gradient"])
def test_weighted_step_matches_numpy_reference(credit):
    def ref(h, disps, t, sources):
        return sum((1.0 / (t + 1) if s.startswith("y_") else 1.0) * d for d, s in zip(disps, sources))

    assert merge_kind("weighted_step") == "weighted"
    eng = check("weighted_step", ref, credit)
    assert eng.plan.stacks[eng.plan.where["h_1"][0]].fused_merge


def test_weighted_step_equals_the_python_function_of_merges_md():
    def weighted_step_py(h, proposals, node, sources):
        t = int(node.split("_")[1])
        target = h.copy()
        for tau, src in zip(proposals, sources):
            target += (1.0 / (t + 1) if src.startswith("y_") else 1.0) * (tau - h)
        return target

    register_merge("weighted_step_py_test", weighted_step_py, overwrite=True)
    fused, *_ = run("weighted_step")
    python, *_ = run("weighted_step_py_test")
    for t in range(1, 7):
        np.testing.assert_allclose(fused.target(f"h_{t}"), python.target(f"h_{t}"), rtol=1e-12, atol=1e-14)
    for k in fused.grads:
        np.testing.assert_allclose(fused.grads[k], python.grads[k], rtol=1e-11, atol=1e-14, err_msg=k)


def test_weighted_with_a_weight_on_the_path_through_time():
    """The chain's own path weighted too: the scan scales it, other deliveries are divided by it."""
    def w(node, source):
        t = int(node.split("_")[1])
        return 0.5 + 0.1 * t if source.startswith("h_") else 2.0 / t

    register_merge("weighted_both_test", Weighted(w), overwrite=True)

    def ref(h, disps, t, sources):
        return sum(w(f"h_{t}", s) * d for d, s in zip(disps, sources))

    def yref(disp, t):  # y_t's proposal comes from the loss E_t
        return w(f"y_{t}", f"E_{t}") * disp

    check("weighted_both_test", ref, "dtp", ymerge=yref)
    check("weighted_both_test", ref, "gradient", blas="numba", ymerge=yref)


def test_weighted_on_a_dag_with_several_consumers():
    weights = {("a", "b"): 0.3, ("a", "s"): 1.7, ("a", "c"): 0.6, ("s", "c"): 2.5, ("b", "s"): 0.8}
    register_merge("w_dag_test", Weighted(lambda node, source: weights.get((node, source), 1.0)), overwrite=True)
    g = tp.Graph("dag", dtype="float64", merge="w_dag_test")
    g.input("x", 3)
    g.index_input("lab", 2)
    g.dense("a", ["x"], 4, weights=["Wa"], bias="ba")
    g.dense("b", ["a"], 4, weights=["Wb"])
    g.add_node("s", ["a", "b"])
    g.dense("c", ["s", "a"], 4, weights=["Wc1", "Wc2"])
    g.softmax_output("y", ["c"], 2, weights=["Wy"])
    g.cross_entropy("L", "y", "lab")
    eng = tp.Engine(g, alpha=0.5, seed=1)
    rng = np.random.default_rng(2)
    eng.step({"x": rng.normal(size=(6, 3)), "lab": rng.integers(0, 2, 6)}, apply=False)
    for node in ("a", "b", "s", "c"):
        h = eng.value(node)
        expect = h + sum(weights.get((node, src), 1.0) * (tau - h) for src, tau in eng.proposals(node).items())
        np.testing.assert_allclose(eng.target(node), expect, rtol=1e-12, atol=1e-14, err_msg=node)
    assert len(eng.proposals("a")) == 3


def test_srn_step_weight_and_weighted_errors():
    assert srn_step_weight("h_3", "y_3") == 0.25 and srn_step_weight("h_3", "h_4") == 1.0
    assert srn_step_weight("a", "y_1") == 1.0
    register_merge("w_zero_test", Weighted(lambda node, source: 0.0), overwrite=True)
    with pytest.raises(tp.GraphError, match="finite number > 0"):
        tp.Engine(tp.build_srn(3, 3, 4, 3, merge="w_zero_test"))
    with pytest.raises(tp.GraphError, match="callable"):
        Weighted(3.0)


# ---------------------------------------------------------------- norm-clipped sum
@pytest.mark.parametrize("credit", ["dtp", "gradient"])
@pytest.mark.parametrize("blas", ["auto", "numba"])
def test_clipped_matches_numpy_reference(credit, blas):
    assert merge_kind("clipped") == "jit"

    def ref(h, disps, t, sources):
        return clip_rows(sum(disps), 1.0)

    eng = check("clipped", ref, credit, blas, alpha=40.0, ymerge=lambda disp, t: clip_rows(disp, 1.0))
    norms = [np.linalg.norm(eng.displacement(f"h_{t}"), axis=1) for t in range(1, 7)]
    assert max(n.max() for n in norms) == pytest.approx(1.0, rel=1e-9)  # some rows were clipped
    assert min(n.min() for n in norms) < 0.999  # and some were not


def test_clip_sum_kernel_against_numpy():
    rng = np.random.default_rng(0)
    d, p = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    expect = clip_rows(d + p, 1.5)
    out = d.copy()
    get_merge("clipped").fn(np.zeros_like(d), out, p, 0, np.array([1.5]))
    np.testing.assert_allclose(out, expect, rtol=1e-13)
    out = d.copy()
    clip_sum(None, out, p, 0, np.array([1.5]))  # the Python function, as written
    np.testing.assert_allclose(out, expect, rtol=1e-13)


def test_clipped_on_a_dag_without_chain():
    g = tp.Graph("mlp", dtype="float64", merge="clipped")
    g.input("x", 3)
    g.index_input("lab", 2)
    g.dense("a", ["x"], 4, weights=["Wa"])
    g.dense("b", ["a"], 4, weights=["Wb"])
    g.dense("c", ["a", "b"], 4, weights=["Wc1", "Wc2"])
    g.softmax_output("y", ["c"], 2, weights=["Wy"])
    g.cross_entropy("L", "y", "lab")
    eng = tp.Engine(g, alpha=60.0, seed=3)
    rng = np.random.default_rng(1)
    eng.step({"x": rng.normal(size=(5, 3)), "lab": rng.integers(0, 2, 5)}, apply=False)
    for node in ("a", "b", "c", "y"):
        h = eng.value(node)
        expect = h + clip_rows(sum(tau - h for tau in eng.proposals(node).values()), 1.0)
        np.testing.assert_allclose(eng.target(node), expect, rtol=1e-12, atol=1e-14, err_msg=node)


# ---------------------------------------------------------------- compiled user merges
def future_damped(h, d, p, k, params):
    """d = d + params[0] * p (the proposal from the future damped), elementwise."""
    rows, cols = d.shape
    for r in range(rows):
        for j in range(cols):
            d[r, j] += params[0] * p[r, j]


@pytest.mark.parametrize("credit", ["dtp", "gradient"])
def test_user_jit_merge_runs_in_the_scan_and_matches_numpy(credit):
    register_merge("future_damped_test", future_damped, overwrite=True, jit=True, params=[0.3])
    m = get_merge("future_damped_test")
    assert isinstance(m, JitMerge) and m.py is future_damped and m.params.tolist() == [0.3]

    def ref(h, disps, t, sources):
        return sum((0.3 if s.startswith("h_") else 1.0) * d for d, s in zip(disps, sources))

    check("future_damped_test", ref, credit)
    # the same strategy as a Weighted one gives the same targets
    register_merge("future_damped_w_test", Weighted(lambda n, s: 0.3 if s.startswith("h_") else 1.0),
                   overwrite=True)
    a, *_ = run("future_damped_test", credit)
    b, *_ = run("future_damped_w_test", credit)
    for t in range(1, 7):
        np.testing.assert_allclose(a.target(f"h_{t}"), b.target(f"h_{t}"), rtol=1e-12, atol=1e-14)


def test_register_merge_errors():
    def not_numba(h, d, p, k, params):
        d[:] = {"a": 1}["a"] + object()

    with pytest.raises(tp.GraphError, match="'bad_jit_test'.*Numba cannot compile"):
        register_merge("bad_jit_test", not_numba, jit=True)
    with pytest.raises(tp.GraphError, match="fused already"):
        register_merge("w_jit_test", Weighted(srn_step_weight), jit=True)
    with pytest.raises(tp.GraphError, match="jit=True merges only"):
        register_merge("params_test", lambda h, ps: h, params=[1.0])
    with pytest.raises(tp.GraphError, match="already registered"):
        register_merge("clipped", clip_sum, jit=True)
    with pytest.raises(tp.GraphError, match="a built-in"):
        register_merge("weighted_step", lambda h, ps: h, overwrite=True)
    assert {"weighted_step", "clipped"} <= set(tp.known_merges())


def test_config_accepts_the_new_merges():
    from tpgraph.train import Config, apply_overrides

    for name in ("clipped", "weighted_step"):
        assert apply_overrides(Config(), [f"method.merge={name}"]).method.merge == name


# ---------------------------------------------------------------- the comparison script
@pytest.mark.slow
def test_compare_merges_example_runs_and_writes_its_table(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "compare_merges.py"
    spec = importlib.util.spec_from_file_location("compare_merges", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    doc = tmp_path / "doc.md"
    doc.write_text("before\n<!-- compare_merges:begin -->\nold\n<!-- compare_merges:end -->\nafter\n")
    rows = mod.main(["--quick", "--seeds", "2", "--tasks", "expansion", "--json", str(tmp_path / "r.json"),
                     "--write", str(doc), "--plot", str(tmp_path / "a.png")])
    assert [r["strategy"] for r in rows] == [label for label, _ in mod.STRATEGIES]
    assert all(len(r["results"]) == 2 for r in rows)
    bptt = rows[-1]["results"]
    assert all(x["angle_W_h"] < 1e-2 and x["angle_h_mean"] < 1e-2 for x in bptt)  # float32: 0 up to rounding
    tp_linear = rows[0]["results"]
    assert all(0 < x["angle_W_h"] < 180 for x in tp_linear)
    text = doc.read_text()
    assert text.startswith("before\n<!-- compare_merges:begin -->\nMade with `python examples/compare_merges.py --quick")
    assert "old" not in text and text.endswith("<!-- compare_merges:end -->\nafter\n")
    assert text.count("| sequence expansion, length 10 |") == len(mod.STRATEGIES)
    assert (tmp_path / "a.png").stat().st_size > 1000
    # the saved results give the same table again
    again = tmp_path / "again.md"
    again.write_text("<!-- compare_merges:begin -->\n<!-- compare_merges:end -->\n")
    mod.main(["--combine", str(tmp_path / "r.json"), "--write", str(again)])
    assert mod.format_table(rows) in again.read_text()
