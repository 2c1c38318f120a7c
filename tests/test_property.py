"""Property: any graph declaration either compiles and runs a finite step, or raises a TPGraphError.

Declarations are generated at random, valid and invalid: random node kinds
(including unknown ones, through ``Graph.from_networkx``), sizes, inputs that
may be missing, later nodes or the node itself (cycles), credit rules
including ``dtp``/``tp`` without an inverse, parameter groups that may clash
in shape or be shared between a forward node and an inverse, activations,
merge strategies (built-in, registered, unknown), losses with the wrong
partner. Each is declared, compiled, given an engine and one step on a random
valid batch. Nothing but a :class:`tpgraph.TPGraphError` may escape, and a
step that runs must leave a finite loss and finite parameters.
"""

import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tpgraph as tp

tp.register_merge("prop_py_mean", lambda h, props: h + sum(p - h for p in props) / len(props), overwrite=True)

ACTS = ["tanh", "sigmoid", "relu", "leaky_relu", "identity"]
MERGES = ["linear", "mean", "prop_py_mean"]


class HypothesisPicker:
    def __init__(self, draw):
        self.draw = draw

    def choice(self, seq):
        return self.draw(st.sampled_from(list(seq)))

    def integer(self, lo, hi):
        return self.draw(st.integers(lo, hi))

    def chance(self, p):
        return p > 0 and self.draw(st.integers(0, 99)) < round(100 * p)


class RandomPicker:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def choice(self, seq):
        seq = list(seq)
        return seq[int(self.rng.integers(len(seq)))]

    def integer(self, lo, hi):
        return int(self.rng.integers(lo, hi + 1))

    def chance(self, p):
        return p > 0 and self.rng.random() < p


#: Kinds of corruption; a declaration draws a few, each with its own chance per decision.
CORRUPTIONS = ("merge", "kind", "inputs", "act", "groups", "rules", "inverses", "losses")


def declare(pick, bad):
    """A list of node specs (plain dicts) and graph options.

    ``bad`` maps a corruption in :data:`CORRUPTIONS` to its chance at each
    decision it concerns (absent: never); ``{}`` declares a valid graph.
    """
    bad = {c: bad.get(c, 0.0) for c in CORRUPTIONS}
    specs = []
    sizes = {}  # real-valued nodes -> width (as the generator intends it)
    classes = {}  # integer data -> number of classes
    opts = dict(dtype=pick.choice(["float32", "float64"]),
                merge=pick.choice(MERGES + (["no_such_merge"] if pick.chance(bad["merge"]) else [])))

    def add(spec):
        specs.append(spec)

    def data(kind):
        name = f"n{len(specs)}"
        if kind == "input":
            size = pick.integer(1, 4)
            add(dict(kind="input", name=name, size=size))
            sizes[name] = size
        else:
            k = pick.integer(1, 4)
            add(dict(kind="index_input", name=name, num_classes=k))
            classes[name] = k
        return name

    def weird_source():
        return pick.choice(["ghost", f"n{len(specs)}", f"n{len(specs) + 1}", f"n{len(specs) + 2}"])

    def sources(k, allow_index=True):
        pool = list(sizes) + (list(classes) if allow_index else [])
        out = []
        for _ in range(k):
            if pick.chance(bad["inputs"]):
                out.append(weird_source())  # missing, itself or a later node (maybe a cycle)
            elif pool:
                out.append(pick.choice(pool))
        return list(dict.fromkeys(out)) if not pick.chance(bad["inputs"]) else out  # duplicates only when bad

    def width(u):
        return sizes.get(u, classes.get(u))

    data("input")
    data("index_input")
    n_nodes = pick.integer(1, 6)
    for _ in range(n_nodes):
        kind = pick.choice(["dense", "dense", "dense", "add", "softmax_output", "input", "index_input"]
                           + (["foo", "mse", "cross_entropy"] if pick.chance(bad["kind"]) else []))
        name = f"n{len(specs)}"
        if kind in ("input", "index_input"):
            data(kind)
        elif kind in ("dense", "softmax_output"):
            ins = sources(pick.integer(1, 3))
            if not ins:
                continue
            size = pick.integer(1, 4)
            act = "identity" if kind == "softmax_output" else pick.choice(ACTS + (["swish"] if pick.chance(bad["act"]) else []))
            weights, rules, inverses = [], [], {}
            for slot, u in enumerate(ins):
                w = width(u)
                if pick.chance(bad["groups"]):
                    weights.append(pick.choice(["G", "H", "V"]))  # shared regardless of shape
                elif pick.chance(0.4) and w is not None:
                    weights.append(f"S{size}x{w}")  # shared, shape-consistent
                else:
                    weights.append(f"W_{name}_{slot}")
                if u in classes:
                    rules.append(pick.choice(["gradient", "none"] + (["dtp"] if pick.chance(bad["rules"]) else [])))
                    continue
                rule = pick.choice(["gradient", "gradient", "dtp", "tp", "none"] + (["magic"] if pick.chance(bad["rules"]) else []))
                rules.append(rule)
                if (rule in ("dtp", "tp") and not pick.chance(bad["rules"])) or pick.chance(bad["inverses"]):
                    of = u if not pick.chance(bad["inverses"]) else pick.choice(ins + ["ghost"])
                    # others='forward' adds W_i h_i (node space) to the inverse's pre-activation (source
                    # space); with other inputs and different widths that is a known engine bug (see
                    # test_graph.py::test_inverse_others_forward_needs_equal_sizes), kept out of here
                    others = pick.choice(["forward", "none"]) if (width(of) == size or len(ins) == 1) else "none"
                    inverses[of] = dict(
                        weight=(pick.choice([f"S{size}x{size}", "S1x1", "V", "G"]) if pick.chance(bad["groups"])
                                else f"V_{name}_{slot}"),
                        bias=pick.choice([None, f"c_{name}_{slot}"]),
                        act=pick.choice(ACTS + (["swish"] if pick.chance(bad["act"]) else [])),
                        others=others,
                        noise=pick.choice([0.0, 0.2] + ([-1.0] if pick.chance(bad["inverses"]) else [])))
            bias = pick.choice([None, f"b_{name}", f"sb{size}"] + (["G", "sb1"] if pick.chance(bad["groups"]) else []))
            spec = dict(kind=kind, name=name, inputs=ins, size=size, act=act, weights=weights, bias=bias,
                        rules=rules, inverses=inverses)
            if pick.chance(0.2):
                spec["merge"] = pick.choice(MERGES + (["no_such_merge"] if pick.chance(bad["merge"]) else []))
            add(spec)
            if all(u in sizes or u in classes for u in ins):
                sizes[name] = size
            if kind == "softmax_output" and not pick.chance(bad["losses"]):
                labels = data("index_input")
                classes[labels] = size
                specs[-1]["num_classes"] = size
                add(dict(kind="cross_entropy", name=f"n{len(specs)}", inputs=[name, labels],
                         reduction=pick.choice(["mean", "sum"])))
        elif kind == "add":
            real = list(sizes)
            if not real:
                continue
            u = pick.choice(real)
            same = [v for v in real if sizes[v] == sizes[u] and v != u]
            ins = [u] + same[: pick.integer(0, 2)]
            if pick.chance(bad["inputs"]):
                ins += sources(1) + [pick.choice(list(sizes) + list(classes))]
            rules = [pick.choice(["gradient", "gradient", "none"] + (["dtp"] if pick.chance(bad["rules"]) else []))
                     for _ in ins]
            add(dict(kind="add", name=name, inputs=ins, rules=rules))
            sizes[name] = sizes[u]
        else:  # a bad loss or an unknown kind
            ins = sources(pick.integer(1, 2))
            add(dict(kind=kind, name=name, inputs=ins))
    # at least one loss, usually a valid one
    if not pick.chance(bad["losses"]):
        pred = pick.choice(list(sizes))
        target = data("input")
        if not pick.chance(bad["losses"]):
            sizes[target] = sizes[pred]
            specs[-1]["size"] = sizes[pred]
        add(dict(kind="mse", name=f"n{len(specs)}", inputs=[pred, target], reduction=pick.choice(["mean", "sum"])))
    return specs, opts


def build_api(specs, opts):
    g = tp.Graph("prop", dtype=opts["dtype"], merge=opts["merge"])
    for s in specs:
        k, name = s["kind"], s["name"]
        if k == "input":
            g.input(name, s["size"])
        elif k == "index_input":
            g.index_input(name, s["num_classes"])
        elif k == "dense":
            g.dense(name, s["inputs"], s["size"], act=s["act"], weights=s["weights"], bias=s["bias"],
                    rules=s["rules"], merge=s.get("merge"))
        elif k == "softmax_output":
            g.softmax_output(name, s["inputs"], s["size"], weights=s["weights"], bias=s["bias"], rules=s["rules"],
                             merge=s.get("merge"))
        elif k == "add":
            g.add_node(name, s["inputs"], rules=s["rules"])
        elif k == "mse":
            ins = s["inputs"]
            if len(ins) != 2:
                g.add(tp.MSE(name, tuple(ins)))
            else:
                g.mse(name, ins[0], ins[1], reduction=s.get("reduction", "mean"))
        elif k == "cross_entropy":
            ins = s["inputs"]
            if len(ins) != 2:
                g.add(tp.CrossEntropy(name, tuple(ins)))
            else:
                g.cross_entropy(name, ins[0], ins[1], reduction=s.get("reduction", "mean"))
        else:
            raise tp.GraphError(f"node {name!r}: unknown kind {k!r} (the API has no declaration for it)")
        for of, inv in s.get("inverses", {}).items():
            g.add_inverse(name, of=of, **inv)
    return g


def build_networkx(specs, opts):
    G = nx.DiGraph(name="prop_nx")
    for s in specs:
        attrs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in s.items() if k != "name"}
        if s["kind"] == "softmax_output":
            attrs.pop("act", None)
        if not attrs.get("inverses"):
            attrs.pop("inverses", None)
        G.add_node(s["name"], **attrs)
        for u in s.get("inputs", ()):
            if u not in G:
                G.add_node(u)  # referenced before (or without) being declared
    for s in specs:
        for u in s.get("inputs", ()):
            G.add_edge(u, s["name"])
    # nodes referenced but never declared carry no kind: from_networkx must refuse them cleanly
    return tp.Graph.from_networkx(G, dtype=opts["dtype"], merge=opts["merge"])


def random_batch(g, B, rng):
    batch = {}
    for n in g.nodes:
        if isinstance(n, tp.IndexInput):
            batch[n.name] = rng.integers(0, n.num_classes, B)
        elif isinstance(n, tp.Input):
            batch[n.name] = rng.normal(size=(B, n.size))
    return batch


def compile_and_step(specs, opts, via_networkx, seed):
    """None if it ran a finite step; the TPGraphError otherwise. Any other exception escapes."""
    rng = np.random.default_rng(seed)
    try:
        g = build_networkx(specs, opts) if via_networkx else build_api(specs, opts)
        eng = tp.Engine(g, seed=seed, lr=0.01, alpha=0.5)
        res = eng.step(random_batch(g, int(rng.integers(1, 4)), rng))
    except tp.TPGraphError as exc:
        return exc
    assert np.isfinite(res.loss)
    for k, v in eng.params.items():
        assert np.all(np.isfinite(v)), k
    assert eng.step_count == 1
    return None


@st.composite
def declarations(draw):
    kinds = draw(st.sets(st.sampled_from(CORRUPTIONS), max_size=3))
    bad = {c: draw(st.sampled_from([0.15, 0.4])) for c in sorted(kinds)}
    specs, opts = declare(HypothesisPicker(draw), bad)
    return specs, opts, draw(st.booleans()), draw(st.integers(0, 2 ** 16))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(declarations())
def test_any_declaration_runs_or_raises_a_tpgraph_error(decl):
    specs, opts, via_networkx, seed = decl
    compile_and_step(specs, opts, via_networkx, seed)


@pytest.mark.parametrize("via_networkx", [False, True])
def test_valid_declarations_always_run(via_networkx):
    """With no corruption the generator's graphs are valid: every one must compile and run a finite step
    (so the property above is not passing by rejecting everything)."""
    for seed in range(40):
        specs, opts = declare(RandomPicker(seed), bad={})
        err = compile_and_step(specs, opts, via_networkx, seed)
        assert err is None, f"seed {seed}: {type(err).__name__}: {err}\n{specs}"


def test_corrupted_declarations_are_mostly_refused():
    """Each kind of corruption alone gets refused (a TPGraphError, never another type) in many declarations."""
    refused = ran = 0
    for seed in range(80):
        specs, opts = declare(RandomPicker(1000 + seed), bad={CORRUPTIONS[seed % len(CORRUPTIONS)]: 0.5})
        err = compile_and_step(specs, opts, seed % 2 == 1, seed)
        refused += err is not None
        ran += err is None
    assert refused >= 30 and ran >= 5, (refused, ran)
