"""Credit rules as one registry (tpgraph.rules), and the feedback-alignment rule ``fa``.

``fa`` is checked three ways: against plain-NumPy references written from its
definition (``tau = h_u + B^T (f'(a_v) * (h_hat_v - h_v))``, on a DAG and
through time in the SRN's scan), against the ``gradient`` rule when its
feedback matrices are set to the forward weights, and against finite
differences in that case.
"""

import numpy as np
import pytest

import tpgraph as tp
from tpgraph.rules import CreditRule, FeedbackAlignment, get_rule, known_rules, register_rule


def mlp(rules=("fa", "fa"), dtype="float64"):
    g = tp.Graph("mlp", dtype=dtype)
    g.input("x", 4)
    g.index_input("label", 3)
    g.dense("h1", ["x"], 5, act="tanh", weights=["W1"], bias="b1")
    g.dense("h2", ["h1"], 6, act="tanh", weights=["W2"], bias="b2", rules=[rules[0]])
    g.softmax_output("y", ["h2"], 3, weights=["W3"], bias="b3", rules=[rules[1]])
    g.cross_entropy("loss", "y", "label")
    return g


def batch(B=7, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(B, 4)), "label": rng.integers(0, 3, B)}


# ---------------------------------------------------------------- the registry
def test_registry_lists_the_built_in_rules_and_what_they_need():
    assert {"dtp", "tp", "gradient", "fa", "none"} <= set(known_rules())
    assert get_rule("dtp").needs_inverse and get_rule("tp").needs_inverse
    assert not get_rule("gradient").needs_inverse and not get_rule("gradient").needs_feedback
    assert get_rule("fa").needs_feedback and get_rule("fa").needs_weights
    assert not get_rule("none").carries_credit
    assert get_rule("gradient").for_losses and not get_rule("fa").for_losses
    assert tp.get_rule("fa") is get_rule("fa") and "fa" in tp.known_rules()


def test_unknown_rule_lists_the_registered_ones():
    with pytest.raises(tp.GraphError) as info:
        mlp(rules=("magic", "gradient"))
    msg = str(info.value)
    assert "'magic'" in msg and "'h1' -> 'h2'" in msg
    for name in known_rules():
        assert name in msg
    with pytest.raises(tp.GraphError, match="unknown credit rule 'magic'"):
        get_rule("magic")


def test_register_rule_refuses_duplicates_and_non_rules():
    with pytest.raises(tp.GraphError, match="already registered"):
        register_rule(FeedbackAlignment)
    with pytest.raises(tp.GraphError, match="CreditRule"):
        register_rule(object())

    class Nameless(FeedbackAlignment):
        name = ""

    with pytest.raises(tp.GraphError, match="no name"):
        register_rule(Nameless)


def test_credit_rule_is_abstract():
    with pytest.raises(TypeError):
        CreditRule()


def test_fa_on_a_node_without_weights_says_so():
    g = tp.Graph("add", dtype="float64")
    g.input("x", 3)
    g.dense("a", ["x"], 3, weights=["Wa"])
    g.add_node("s", ["a", "x"], rules=["fa", "gradient"])
    g.input("t", 3)
    g.mse("L", "s", "t")
    with pytest.raises(tp.GraphError) as info:
        g.validate()
    msg = str(info.value)
    assert "'a' -> 's'" in msg and "'fa'" in msg and "add node 's' has no weights" in msg


def test_fa_on_a_loss_edge_says_so():
    g = tp.Graph("loss", dtype="float64")
    g.input("x", 3)
    g.input("t", 3)
    g.dense("a", ["x"], 3, weights=["Wa"])
    with pytest.raises(tp.GraphError) as info:
        g.mse("L", "a", "t", rule="fa")
    assert "'L'" in str(info.value) and "'fa'" in str(info.value) and "'gradient'" in str(info.value)


def test_with_rules_fa_leaves_losses_on_gradient():
    g = mlp(rules=("gradient", "gradient")).with_rules("fa")
    assert g.node("h2").rules == ("fa",) and g.node("y").rules == ("fa",)
    assert g.node("loss").rules == ("gradient", "none")
    g.validate()


class OrthogonalFeedback(FeedbackAlignment):
    """A variant registered as a new entry: orthogonal feedback matrices (seeded)."""

    name = "fa_orthogonal_test"

    def make_feedback(self, group, shape, dtype, seed):
        rng = np.random.default_rng(seed + 1000)
        q, _ = np.linalg.qr(rng.standard_normal((max(shape), max(shape))))
        return q[: shape[0], : shape[1]].astype(dtype)


def test_a_registered_variant_is_an_entry_not_a_branch():
    register_rule(OrthogonalFeedback, overwrite=True)
    eng = tp.Engine(mlp(rules=("fa_orthogonal_test", "gradient")), seed=3)
    eng.step(batch(), apply=False)
    B2 = eng.feedback["W2"]
    assert B2.shape == (6, 5)
    np.testing.assert_allclose(B2.T @ B2, np.eye(5), atol=1e-12)  # orthonormal columns: the variant's matrix
    h1, h2 = eng.value("h1"), eng.value("h2")
    ref = get_rule("fa_orthogonal_test").reference(h1, h2, eng.target("h2"), feedback=B2, deriv=1 - h2 ** 2)
    np.testing.assert_allclose(eng.proposal("h1", "h2"), ref, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- fa: feedback matrices
def test_feedback_matrices_are_seeded_per_group_fixed_and_never_trained():
    g = mlp()
    e1 = tp.Engine(g, seed=5, optimizer="sgd", lr=0.5)
    e2 = tp.Engine(g, seed=5)
    e3 = tp.Engine(g, seed=6)
    assert set(e1.feedback) == {"W2", "W3"}
    assert e1.feedback["W2"].shape == e1.params["W2"].shape
    np.testing.assert_array_equal(e1.feedback["W2"], e2.feedback["W2"])
    assert not np.allclose(e1.feedback["W2"], e3.feedback["W2"])
    assert not np.allclose(e1.feedback["W2"][:3, :3], e1.feedback["W3"][:3, :3])  # per group
    assert "W2" not in e1.plan.inverse_groups and all(k not in e1.feedback for k in ("W1",))
    before = {k: v.copy() for k, v in e1.feedback.items()}
    w_before = e1.params["W2"].copy()
    for s in range(3):
        e1.step(batch(seed=s))
    for k in before:
        np.testing.assert_array_equal(e1.feedback[k], before[k])
    assert not np.allclose(e1.params["W2"], w_before)  # the forward weight trains, its feedback does not
    # entries N(0, 1/n_in): the scale of a norm-preserving random matrix
    big = FeedbackAlignment().make_feedback("W", (400, 300), np.float64, 0)
    assert abs(big.std() * np.sqrt(300) - 1) < 0.02 and abs(big.mean()) < 0.01


# ---------------------------------------------------------------- fa: NumPy reference on a DAG
def numpy_fa_mlp(P, Bm, x, label, alpha):
    """Forward, targets and local gradients of the mlp with fa on both edges, from the definitions."""
    n = x.shape[0]
    h1 = np.tanh(x @ P["W1"].T + P["b1"])
    h2 = np.tanh(h1 @ P["W2"].T + P["b2"])
    z = h2 @ P["W3"].T + P["b3"]
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz = (p - np.eye(3)[label]) / n
    hat_z = z - alpha * dz                                  # the loss target (Eq. 8)
    hat_h2 = h2 + (hat_z - z) @ Bm["W3"]                    # fa through the identity output: f' = 1
    hat_h1 = h1 + ((1 - h2 ** 2) * (hat_h2 - h2)) @ Bm["W2"]
    grads = {}
    for name, (out, hat, inp, deriv) in {"1": (h1, hat_h1, x, 1 - h1 ** 2), "2": (h2, hat_h2, h1, 1 - h2 ** 2),
                                          "3": (z, hat_z, h2, np.ones_like(z))}.items():
        delta = (out - hat) * deriv                         # d(1/2||f - hat||^2)/d(pre-activation)
        grads["W" + name] = delta.T @ inp
        grads["b" + name] = delta.sum(0)
    return {"h1": hat_h1, "h2": hat_h2, "y": hat_z}, grads


def test_fa_matches_numpy_reference_on_a_dag():
    eng = tp.Engine(mlp(), alpha=0.7, seed=2)
    rng = np.random.default_rng(9)
    for k in eng.params:
        eng.params[k] = rng.normal(0, 0.5, eng.params[k].shape)
    P = {k: v.copy() for k, v in eng.params.items()}
    b = batch(B=9, seed=4)
    eng.step(b, apply=False)
    targets, grads = numpy_fa_mlp(P, eng.feedback, b["x"], b["label"], 0.7)
    for name, hat in targets.items():
        np.testing.assert_allclose(eng.target(name), hat, rtol=1e-11, atol=1e-13, err_msg=name)
    for k, gk in grads.items():
        np.testing.assert_allclose(eng.grads[k], gk, rtol=1e-10, atol=1e-13, err_msg=k)
    # the rule's own reference gives the same proposal for h1
    h1, h2 = eng.value("h1"), eng.value("h2")
    ref = get_rule("fa").reference(h1, h2, eng.target("h2"), feedback=eng.feedback["W2"], deriv=1 - h2 ** 2)
    np.testing.assert_allclose(eng.proposal("h1", "h2"), ref, rtol=1e-12, atol=1e-14)


def test_gradient_rule_reference_matches_the_engine():
    eng = tp.Engine(mlp(rules=("gradient", "gradient")), alpha=0.5, seed=1)
    eng.step(batch(), apply=False)
    h1, h2 = eng.value("h1"), eng.value("h2")
    ref = get_rule("gradient").reference(h1, h2, eng.target("h2"), weight=eng.params["W2"], deriv=1 - h2 ** 2)
    np.testing.assert_allclose(eng.proposal("h1", "h2"), ref, rtol=1e-12, atol=1e-14)


def test_fa_with_feedback_set_to_the_weights_equals_gradient():
    g = mlp()
    fa = tp.Engine(g, alpha=0.3, seed=4)
    bp = tp.Engine(g.with_rules("gradient"), fa.params, alpha=0.3, seed=4)
    for k in fa.feedback:
        fa.feedback[k][...] = fa.params[k]
    b = batch(seed=8)
    fa.step(b, apply=False)
    bp.step(b, apply=False)
    for name in ("h1", "h2", "y"):
        np.testing.assert_allclose(fa.displacement(name), bp.displacement(name), rtol=1e-13, atol=1e-15)
    for k in fa.grads:
        np.testing.assert_allclose(fa.grads[k], bp.grads[k], rtol=1e-13, atol=1e-15, err_msg=k)


# ---------------------------------------------------------------- fa in the SRN's scan
def srn_batch(L, B, H, n_in, n_out, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, n_in, (L, B))
    y = rng.integers(0, n_out, (L, B))
    return x, y, {("h_0",): np.zeros((1, B, H)), tuple(f"x_{t}" for t in range(1, L + 1)): x,
                  tuple(f"l_{t}" for t in range(1, L + 1)): y}


def numpy_fa_srn(P, Bh, x, y, alpha, n_in, n_out):
    """The SRN with fa back in time: hat_{t-1} = e_{t-1} + h_{t-1} + B_h^T ((1 - h_t^2) (hat_t - h_t))."""
    L, n = x.shape
    X, Y = np.eye(n_in)[x], np.eye(n_out)[y]
    h = [np.zeros((n, P["W_h"].shape[0]))]
    for t in range(L):
        h.append(np.tanh(X[t] @ P["W_xh"].T + h[-1] @ P["W_h"].T + P["b_h"]))
    z = [h[t + 1] @ P["W_hy"].T + P["b_y"] for t in range(L)]
    p = [np.exp(zz - zz.max(1, keepdims=True)) for zz in z]
    p = [pp / pp.sum(1, keepdims=True) for pp in p]
    e = [-alpha * ((p[t] - Y[t]) / n) @ P["W_hy"] for t in range(L)]  # step displacements (Eq. 20)
    hat = [None] * (L + 1)
    hat[L] = h[L] + e[L - 1]
    for t in range(L, 1, -1):
        hat[t - 1] = h[t - 1] + ((1 - h[t] ** 2) * (hat[t] - h[t])) @ Bh + e[t - 2]
    gW = np.zeros_like(P["W_h"])
    for t in range(1, L + 1):
        gW += ((h[t] - hat[t]) * (1 - h[t] ** 2)).T @ h[t - 1]
    return hat, gW


@pytest.mark.parametrize("blas", ["auto", "numba"])
def test_fa_through_time_matches_numpy_reference(blas):
    L, B, H, n_in, n_out, alpha = 6, 4, 5, 3, 3, 0.4
    g = tp.build_srn(L, n_in, H, n_out, dtype="float64", credit="fa")
    eng = tp.Engine(g, alpha=alpha, seed=3, blas=blas)
    rng = np.random.default_rng(1)
    for k in eng.params:
        eng.params[k] = rng.normal(0, 0.4, eng.params[k].shape)
    P = {k: v.copy() for k, v in eng.params.items()}
    x, y, b = srn_batch(L, B, H, n_in, n_out, 2)
    eng.step(b, apply=False)
    assert set(eng.feedback) == {"W_h"}
    hat, gW = numpy_fa_srn(P, eng.feedback["W_h"], x, y, alpha, n_in, n_out)
    for t in range(1, L + 1):
        np.testing.assert_allclose(eng.target(f"h_{t}"), hat[t], rtol=1e-10, atol=1e-13, err_msg=f"h_{t}")
    np.testing.assert_allclose(eng.grads["W_h"], gW, rtol=1e-10, atol=1e-13)
    assert not np.any(eng.grads["V_h"]) and not np.any(eng.grads["c_h"])  # no rule uses the inverse: untrained


def test_fa_through_time_with_feedback_equal_to_W_h_is_bptt_and_matches_finite_differences():
    L, B, H, n_in, n_out = 5, 3, 4, 3, 3
    g = tp.build_srn(L, n_in, H, n_out, dtype="float64", credit="fa")
    fa = tp.Engine(g, alpha=1.0, seed=0)
    rng = np.random.default_rng(5)
    for k in fa.params:
        fa.params[k] = rng.normal(0, 0.5, fa.params[k].shape)
    fa.feedback["W_h"][...] = fa.params["W_h"]
    _, _, b = srn_batch(L, B, H, n_in, n_out, 6)
    fa.step(b, apply=False)
    bp = tp.Engine(g.with_rules("gradient"), fa.params, alpha=1.0, seed=0)
    bp.step(b, apply=False)
    np.testing.assert_allclose(fa.grads["W_h"], bp.grads["W_h"], rtol=1e-12, atol=1e-14)
    # central differences of the total loss with respect to W_h
    W = fa.params["W_h"]
    eps = 1e-6
    fd = np.zeros_like(W)
    for i in range(W.shape[0]):
        for j in range(W.shape[1]):
            old = W[i, j]
            W[i, j] = old + eps
            up = bp.forward(b).loss
            W[i, j] = old - eps
            down = bp.forward(b).loss
            W[i, j] = old
            fd[i, j] = (up - down) / (2 * eps)
    np.testing.assert_allclose(fa.grads["W_h"], fd, rtol=1e-5, atol=1e-9)


def test_srn_trains_with_fa_and_shares_feedback_across_lengths():
    model = tp.SRN(4, 8, 4, credit="fa", seed=1, alpha=0.5, lr_f=1e-2, lr_y=1e-2)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, (6, 5))
    first = model.train_step(x, x)
    for _ in range(30):
        last = model.train_step(x, x)
    assert last < first
    assert model.engine(6).feedback is model.engine(3).feedback
    with pytest.raises(tp.ConfigError, match="'magic'"):
        tp.SRN(4, 8, 4, credit="magic")
    with pytest.raises(tp.ConfigError, match="carries no credit"):
        tp.SRN(4, 8, 4, credit="none")
