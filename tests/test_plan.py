"""The stacking plan: structure, and equality with the one-node-per-stack reference.

``compile_plan(g)`` groups same-signature nodes into stacks (a chain through
time runs as one scan); ``compile_plan(g, stacking=False)`` puts every node in
a stack of its own. Both must give the same losses, targets, proposals and
gradients (float64), on the SRN and on random replicated DAGs whose structure
mixes stacks, chains, broadcasts, cross links that force smaller stacks,
inverses and both built-in merges.
"""

import networkx as nx
import numpy as np
import pytest

import tpgraph as tp
from tpgraph.plan import compile_plan


# ---------------------------------------------------------------- helpers
def check_plan_is_sound(plan):
    """Every node in exactly one stack; members alike; no member depends on another except along a chain."""
    g = plan.graph
    G = g.nx
    seen = []
    for i, st in enumerate(plan.stacks):
        assert st.id == i
        members = set(st.members)
        assert len(members) == st.m
        for k, v in enumerate(st.members):
            assert plan.where[v] == (i, k)
            n = g.node(v)
            assert type(n) is type(st.node) and n.rules == st.node.rules
            assert n.settings() == st.node.settings(), (v, st.members[0])
            inside = nx.ancestors(G, v) & members
            if st.chain:
                assert inside == set(st.members[:k]), (v, inside)
            else:
                assert not inside, f"{v} depends on {inside} in the same stack {st}"
            for u in n.inputs:
                su = plan.where[u][0]
                assert su < i or (su == i and st.chain), f"input {u} of {v} is not computed before it"
        seen.extend(st.members)
    assert sorted(seen) == sorted(G.nodes)


def srn_batch(L, B, n_in, n_out, H, seed, many_to_many=True):
    rng = np.random.default_rng(seed)
    batch = {("h_0",): rng.normal(0, 0.3, (1, B, H)),
             tuple(f"x_{t}" for t in range(1, L + 1)): rng.integers(0, n_in, (L, B))}
    if many_to_many:
        batch[tuple(f"l_{t}" for t in range(1, L + 1))] = rng.integers(0, n_out, (L, B))
    else:
        batch[f"l_{L}"] = rng.integers(0, n_out, B)
    return batch


def random_batch(g, B, seed):
    rng = np.random.default_rng(seed)
    batch = {}
    for n in g.nodes:
        if isinstance(n, tp.IndexInput):
            batch[n.name] = rng.integers(0, n.num_classes, B)
        elif isinstance(n, tp.Input):
            batch[n.name] = rng.normal(size=(B, n.size))
    return batch


def assert_same_results(g, batch, alpha=0.4, seed=0, randomise=0.0):
    """Run one step (apply=False) on the stacked and the unstacked plan; everything must agree."""
    stacked, single = compile_plan(g), compile_plan(g, stacking=False)
    assert len(single.stacks) == len(g.nx)
    check_plan_is_sound(stacked)
    check_plan_is_sound(single)
    engines = [tp.Engine(p, alpha=alpha, seed=seed, lr=0.05) for p in (stacked, single)]
    if randomise:
        rng = np.random.default_rng(seed + 99)
        for k in engines[0].params:
            w = rng.normal(0, randomise, engines[0].params[k].shape)
            for e in engines:
                e.params[k] = w
    results = [e.step(batch, apply=False) for e in engines]
    a, b = engines
    assert np.isfinite(results[0].loss)
    assert results[0].loss == pytest.approx(results[1].loss, rel=1e-13, abs=1e-15)
    la, lb = a.losses(), b.losses()
    assert la.keys() == lb.keys()
    for k in la:
        assert la[k] == pytest.approx(lb[k], rel=1e-13, abs=1e-15)
    close = dict(rtol=1e-11, atol=1e-13)
    moved = 0
    for n in g.nodes:
        if n.is_loss or n.is_data:
            continue
        np.testing.assert_allclose(a.value(n.name), b.value(n.name), **close, err_msg=f"value {n.name}")
        ta, tb = a.target(n.name), b.target(n.name)
        np.testing.assert_allclose(ta, tb, **close, err_msg=f"target {n.name}")
        moved += bool(np.any(ta != a.value(n.name)))
        pa, pb = a.proposals(n.name), b.proposals(n.name)
        assert pa.keys() == pb.keys(), n.name
        for c in pa:
            np.testing.assert_allclose(pa[c], pb[c], **close, err_msg=f"proposal {n.name} <- {c}")
    assert moved > 0, "no node received a target: the comparison proves nothing"
    for k in g.param_shapes():
        np.testing.assert_allclose(a.grads[k], b.grads[k], **close, err_msg=f"grad {k}")
    ra, rb = a.reconstruction_losses(), b.reconstruction_losses()
    assert ra.keys() == rb.keys()
    for k in ra:
        assert ra[k] == pytest.approx(rb[k], rel=1e-11, abs=1e-14)
    # and an applied step moves both the same way
    for e in engines:
        e.step(batch)
    for k in g.param_shapes():
        np.testing.assert_allclose(a.params[k], b.params[k], **close, err_msg=f"param {k}")
        np.testing.assert_allclose(a.updates[k], b.updates[k], rtol=1e-10, atol=1e-13, err_msg=f"update {k}")
    return stacked, engines


def stack_of(plan, name):
    return plan.stacks[plan.where[name][0]]


# ---------------------------------------------------------------- the SRN's plan
@pytest.mark.parametrize("L", [1, 2, 6])
def test_srn_compiles_to_few_stacks(L):
    g = tp.build_srn(L, 4, 5, 3)
    plan = compile_plan(g)
    check_plan_is_sound(plan)
    hs = [f"h_{t}" for t in range(1, L + 1)]
    h = stack_of(plan, "h_1")
    assert h.members == hs
    if L > 1:
        assert h.chain and h.rec_slot == 1
    assert stack_of(plan, "y_1").members == [f"y_{t}" for t in range(1, L + 1)]
    assert stack_of(plan, "E_1").members == [f"E_{t}" for t in range(1, L + 1)]
    assert stack_of(plan, "x_1").members == [f"x_{t}" for t in range(1, L + 1)]
    assert stack_of(plan, "l_1").members == [f"l_{t}" for t in range(1, L + 1)]
    assert len(plan.stacks) == 6  # h_0, x, l, h, y, E


def test_srn_many_to_one_compiles_to_few_stacks():
    L = 7
    g = tp.build_srn(L, 4, 5, 3, many_to_many=False)
    plan = compile_plan(g)
    check_plan_is_sound(plan)
    h = stack_of(plan, "h_1")
    assert h.members == [f"h_{t}" for t in range(1, L + 1)] and h.chain
    assert stack_of(plan, f"y_{L}").members == [f"y_{L}"]
    assert stack_of(plan, f"E_{L}").members == [f"E_{L}"]
    assert len(plan.stacks) == 6
    assert "y_1" not in plan.where


def test_unstacked_plan_has_one_node_per_stack():
    g = tp.build_srn(5, 4, 5, 3)
    plan = compile_plan(g, stacking=False)
    assert len(plan.stacks) == len(g.nx)
    assert all(st.m == 1 and not st.chain for st in plan.stacks)
    check_plan_is_sound(plan)


def test_compiling_is_linear_in_the_graph(monkeypatch):
    """No cycle search on a DAG (networkx's find_cycle re-walks the graph per start node: quadratic, and
    an unstacked plan's stack graph is as large as the graph); few refinement rounds on the SRN."""
    monkeypatch.setattr(nx, "find_cycle", lambda *a, **k: pytest.fail("find_cycle called on a DAG"))
    import tpgraph.plan as plan_module

    rounds = []
    refine = plan_module._refine

    def counting(sigs, ins, forced):
        group = refine(sigs, ins, forced)
        rounds.append(len(set(group)))
        return group

    monkeypatch.setattr(plan_module, "_refine", counting)
    for L in (10, 400):
        rounds.clear()
        plan = compile_plan(tp.build_srn(L, 4, 5, 3))
        assert len(plan.stacks) == 6 and rounds == [6]  # one refinement, the same at every length
    plan = compile_plan(tp.build_srn(400, 4, 5, 3), stacking=False)
    assert len(plan.stacks) == len(plan.where)


# ---------------------------------------------------------------- stacked == unstacked on the SRN
@pytest.mark.parametrize("credit,merge", [("dtp", "linear"), ("tp", "mean"), ("gradient", "linear"),
                                          ("dtp", "mean")])
@pytest.mark.parametrize("many_to_many", [True, False])
def test_srn_stacked_equals_unstacked(credit, merge, many_to_many):
    L, B, n_in, H, n_out = 5, 3, 4, 6, 3
    g = tp.build_srn(L, n_in, H, n_out, dtype="float64", credit=credit, merge=merge, many_to_many=many_to_many)
    batch = srn_batch(L, B, n_in, n_out, H, seed=1, many_to_many=many_to_many)
    assert_same_results(g, batch, alpha=0.3, randomise=0.4)


def test_srn_bptt_stacked_equals_unstacked():
    g = tp.build_srn(6, 3, 5, 4, dtype="float64").with_rules("gradient")
    assert_same_results(g, srn_batch(6, 2, 3, 4, 5, seed=2), alpha=1.0, randomise=0.5)


def test_srn_relu_inverse_identity():
    """Other activations in the chain and in its inverse (codes other than tanh through the scans)."""
    g = tp.build_srn(4, 3, 5, 3, dtype="float64", act="leaky_relu", inverse_act="identity")
    assert_same_results(g, srn_batch(4, 3, 3, 3, 5, seed=3), alpha=0.5, randomise=0.3)


# ---------------------------------------------------------------- random replicated DAGs
def replicated_dag(seed, R=3):
    """``R`` replicas of a random template sharing parameter groups, so that they stack.

    Each template node takes 1-2 sources among the replica's data, a trunk node
    broadcast to every replica, earlier template nodes, and optionally a node of
    the *previous* replica (the same template node: a chain; another one: a
    cross link, which may make same-signature nodes depend on each other
    through other nodes). Replica 0 takes those links from data. Credit rules
    are random among gradient, dtp and tp (with learned inverses) and none.
    """
    rng = np.random.default_rng(seed)
    merge = str(rng.choice(["linear", "mean"]))
    g = tp.Graph(f"rep{seed}", dtype="float64", merge=merge)
    g.input("c", 3)
    g.dense("trunk", ["c"], 4, act="tanh", weights=["W_trunk"], bias="b_trunk")
    K = int(rng.integers(2, 5))
    sizes = [int(rng.choice([3, 4])) for _ in range(K)]
    acts = ["tanh", "sigmoid", "leaky_relu", "identity", "tanh"]
    template = []
    for j in range(K):
        cands = [("x", 3), ("s", 5), ("trunk", 4)] + [(f"t{i}", sizes[i]) for i in range(j)]
        k = int(rng.integers(1, 3))
        picks = [cands[i] for i in rng.choice(len(cands), size=k, replace=False)]
        if rng.random() < 0.6:
            i = j if rng.random() < 0.6 else int(rng.integers(0, K))
            picks.append((("prev", i), sizes[i]))
        # an add instead of a dense when two picked real sources share this node's size
        same = [p for p in picks if p[1] == sizes[j] and p[0] != "s"]
        if len(same) >= 2 and rng.random() < 0.3:
            template.append(dict(kind="add", srcs=[p[0] for p in same[:2]], size=sizes[j]))
            continue
        rules, inverses = [], {}
        for slot, (src, src_size) in enumerate(picks):
            if src == "s":
                rules.append(str(rng.choice(["gradient", "none"])))
                continue
            r = str(rng.choice(["gradient", "gradient", "dtp", "tp", "none"]))
            rules.append(r)
            if r in ("dtp", "tp"):
                inverses[slot] = dict(weight=f"V{j}_{slot}", bias=f"c{j}_{slot}" if rng.random() < 0.5 else None,
                                      act=str(rng.choice(["tanh", "identity", "leaky_relu"])),
                                      # 'forward' adds W_i h_i (node space) to the inverse's
                                      # pre-activation (source space): only when the sizes agree
                                      others=str(rng.choice(["forward", "none"])) if src_size == sizes[j]
                                      else "none")
        template.append(dict(kind="dense", srcs=[p[0] for p in picks], size=sizes[j], rules=rules,
                             inverses=inverses, act=str(rng.choice(acts)),
                             bias=f"b{j}" if rng.random() < 0.7 else None))
    inits = set()

    def resolve(src, r):
        if isinstance(src, tuple):
            i = src[1]
            if r == 0:
                inits.add(i)
                return f"init{i}"
            return f"t{i}_{r - 1}"
        if src == "trunk":
            return src  # broadcast to every replica
        return f"{src}_{r}"  # the replica's own data or template node

    for r in range(R):
        g.input(f"x_{r}", 3)
        g.index_input(f"s_{r}", 5)
    mse_node = int(rng.integers(0, K))
    # declare replica by replica (inputs from later replicas are declared later: that is allowed)
    for r in range(R):
        for j, t in enumerate(template):
            name = f"t{j}_{r}"
            ins = [resolve(s, r) for s in t["srcs"]]
            if t["kind"] == "add":
                g.add_node(name, ins)
                continue
            weights = [f"W{j}_{slot}" for slot in range(len(ins))]
            g.dense(name, ins, t["size"], act=t["act"], weights=weights, bias=t["bias"], rules=t["rules"])
            for slot, inv in t["inverses"].items():
                g.add_inverse(name, of=ins[slot], **inv)
        g.softmax_output(f"o_{r}", [f"t{K - 1}_{r}"], 3, weights=["W_out"], bias="b_out")
        g.index_input(f"l_{r}", 3)
        g.cross_entropy(f"E_{r}", f"o_{r}", f"l_{r}", reduction="sum")
        g.input(f"y_{r}", sizes[mse_node])
        g.mse(f"M_{r}", f"t{mse_node}_{r}", f"y_{r}")
    for i in sorted(inits):
        g.input(f"init{i}", sizes[i])
    for grp, shp in g.param_shapes().items():
        g.init(grp, "normal:0.6" if len(shp) == 2 else "normal:0.2")
    return g


SEEDS = range(24)


def test_replicated_dags_exercise_the_plan():
    """The generator yields multi-member stacks, chains, broadcasts and graphs that fall back to smaller stacks."""
    multi = chains = broadcast = fallback = inverses = 0
    for seed in SEEDS:
        g = replicated_dag(seed)
        plan = compile_plan(g)
        multi += any(st.m > 1 and not st.node.is_data for st in plan.stacks)
        chains += any(st.chain for st in plan.stacks)
        broadcast += any(not isinstance(s.rows, slice) and s.rows is not None and len(set(s.rows.tolist())) < st.m
                         for st in plan.stacks for s in st.slots)
        # some template node's replicas did not all land in one stack
        fallback += any(len({plan.where[f"t{j}_{r}"][0] for r in range(3)}) > 1
                        for j in range(5) if f"t{j}_0" in plan.where)
        inverses += bool(plan.inverse_groups)
    assert multi >= 12 and chains >= 4 and broadcast >= 4 and fallback >= 3 and inverses >= 8, \
        (multi, chains, broadcast, fallback, inverses)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_dag_stacked_equals_unstacked(seed):
    g = replicated_dag(seed)
    assert_same_results(g, random_batch(g, 3, seed), alpha=0.5, seed=seed)


# ---------------------------------------------------------------- hand-made structures
def test_same_signature_nodes_depending_through_another_node():
    """``a_t = f(p_t)``, ``p_t = g(a_{t-1})``: the a's share a signature but depend on each other through
    the p's; a two-layer recurrence. Two independent chains with the same weights, and a tree of
    same-signature nodes (one parent, two children), make the plan fall back as well."""
    g = tp.Graph("alternating", dtype="float64")
    g.input("a_0", 3)
    for t in range(1, 5):
        g.dense(f"p_{t}", [f"a_{t - 1}"], 3, act="tanh", weights=["Wp"], bias="bp")
        g.dense(f"a_{t}", [f"p_{t}"], 3, act="tanh", weights=["Wa"], bias="ba", rules=["dtp"])
        g.add_inverse(f"a_{t}", of=f"p_{t}", weight="Va")
        g.input(f"y_{t}", 3)
        g.mse(f"L_{t}", f"a_{t}", f"y_{t}")
    # two chains of one signature
    for c in ("u", "v"):
        g.input(f"{c}_0", 3)
        for t in range(1, 4):
            g.dense(f"{c}_{t}", [f"{c}_{t - 1}"], 3, act="tanh", weights=["Wc"], bias="bc")
        g.input(f"{c}_y", 3)
        g.mse(f"{c}_L", f"{c}_3", f"{c}_y")
    # a tree: r_1 feeds r_2 and r_3, all one signature
    g.dense("r_1", ["a_4"], 3, weights=["Wr"])
    g.dense("r_2", ["r_1"], 3, weights=["Wr"])
    g.dense("r_3", ["r_1"], 3, weights=["Wr"])
    g.add_node("r_sum", ["r_2", "r_3"])
    g.input("r_y", 3)
    g.mse("r_L", "r_sum", "r_y")
    plan, _ = assert_same_results(g, random_batch(g, 4, 0), alpha=0.5, randomise=0.5)
    for names in (["a_1", "a_2"], ["u_1", "v_1"], ["r_1", "r_2"]):
        st = stack_of(plan, names[0])
        assert not (st.m > 1 and not st.chain and names[1] in st.members)


def test_broadcast_input_to_many_consumers():
    """One node feeding many same-signature consumers: a gather with repeated rows, and proposals
    from every consumer scattered back (added up) into the one source."""
    g = tp.Graph("broadcast", dtype="float64", merge="linear")
    g.input("x", 3)
    g.dense("shared", ["x"], 4, act="tanh", weights=["Ws"], bias="bs")
    for i in range(5):
        g.input(f"z_{i}", 2)
        g.dense(f"c_{i}", ["shared", f"z_{i}"], 3, act="sigmoid", weights=["Wc", "Wz"], bias="bc")
        g.input(f"t_{i}", 3)
        g.mse(f"L_{i}", f"c_{i}", f"t_{i}")
    plan, (eng, _) = assert_same_results(g, random_batch(g, 3, 5), alpha=0.7, randomise=0.8)
    st = stack_of(plan, "c_0")
    assert st.members == [f"c_{i}" for i in range(5)]
    # the shared node's target gathers all five proposals: the linear merge adds their displacements
    eng.step(random_batch(g, 3, 5), apply=False)
    props = eng.proposals("shared")
    assert set(props) == {f"c_{i}" for i in range(5)}
    h = eng.value("shared")
    np.testing.assert_allclose(eng.target("shared") - h, sum(p - h for p in props.values()), rtol=1e-12, atol=1e-14)


def test_broadcast_with_gradient_rules_is_backprop():
    """On the broadcast graph with every rule gradient, the shared node's gradient equals finite differences."""
    g = tp.Graph("bcast_bp", dtype="float64")
    g.input("x", 3)
    g.dense("shared", ["x"], 4, act="tanh", weights=["Ws"], bias="bs")
    for i in range(4):
        g.dense(f"c_{i}", ["shared"], 2, act="tanh", weights=["Wc"], bias="bc")
        g.input(f"t_{i}", 2)
        g.mse(f"L_{i}", f"c_{i}", f"t_{i}", reduction="sum")
    for k in ("Ws", "Wc"):
        g.init(k, "normal:0.8")
    eng = tp.Engine(g, alpha=1.0)
    batch = random_batch(g, 3, 1)
    eng.step(batch, apply=False)
    grad = eng.grads["Ws"].copy()
    W = eng.params["Ws"]
    eps = 1e-6
    for idx in [(0, 0), (1, 2), (3, 1)]:
        old = W[idx]
        W[idx] = old + eps
        up = eng.forward(batch).loss
        W[idx] = old - eps
        down = eng.forward(batch).loss
        W[idx] = old
        assert grad[idx] == pytest.approx((up - down) / (2 * eps), rel=1e-6, abs=1e-9)


def test_plan_is_reused_across_batch_sizes():
    g = tp.build_srn(3, 3, 4, 2, dtype="float64")
    eng = tp.Engine(g)
    r3 = eng.forward(srn_batch(3, 3, 3, 2, 4, seed=0)).loss
    eng.forward(srn_batch(3, 5, 3, 2, 4, seed=1))
    assert eng.buf.B == 5
    assert eng.forward(srn_batch(3, 3, 3, 2, 4, seed=0)).loss == r3
