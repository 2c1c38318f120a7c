"""Declaring computation graphs on networkx, and validating them.

A :class:`Graph` wraps a ``networkx.DiGraph`` whose nodes carry a ``node``
attribute (a :class:`tpgraph.nodes.Node`) and whose edges carry the credit
``rule`` and input ``slot`` chosen by the consumer. Users declare node by node
(inputs may be named before they exist), reach the networkx graph as
``graph.nx`` to draw, traverse or export it, and :meth:`Graph.validate`
checks everything before any kernel runs. Every error is a
:class:`~tpgraph.errors.GraphError` naming the node, edge or parameter group.
"""

from __future__ import annotations

import copy
from typing import Mapping

import networkx as nx
import numpy as np

from .errors import GraphError
from .inverse_losses import get_inverse_loss
from .inverses import ANALYTIC_CLIP, ANALYTIC_REG, get_inverse_kind
from .kernels.activations import ACTIVATIONS
from .merges import check_merge
from .nodes import (
    KINDS,
    Activation,
    Add,
    CrossEntropy,
    Dense,
    Elementwise,
    IndexInput,
    Input,
    Inverse,
    MSE,
    Multiply,
    Node,
    Scale,
    SoftmaxOutput,
)
from .params import ParamStore, make_init
from .rules import get_rule

DTYPES = (np.float32, np.float64)


def _input_names(node, inputs) -> tuple:
    if isinstance(inputs, str):
        return (inputs,)
    try:
        return tuple(inputs)
    except TypeError:
        raise GraphError(f"node {node!r}: inputs must be a list of node names, got {inputs!r}") from None


def topological_order(g: nx.DiGraph) -> tuple[list, list | None]:
    """A topological order of ``g`` and, if it has a cycle, one cycle instead.

    Kahn's algorithm by generations, iterative and linear in nodes plus
    edges; it visits nodes in the same order as ``networkx.topological_sort``
    (so plans, and results, do not depend on which one ran). When the sort
    stalls, every node left has a predecessor that is also left; walking back
    along such predecessors must revisit a node, and the walk between the two
    visits is a cycle, returned in edge direction. Also linear.

    Returns
    -------
    order : list
        All nodes, each after its predecessors (partial when there is a cycle).
    cycle : list or None
        The nodes of one cycle, ``cycle[i] -> cycle[i + 1]`` and back to
        ``cycle[0]``; None for a DAG.
    """
    indeg = {v: d for v, d in g.in_degree()}
    generation = [v for v, d in indeg.items() if d == 0]
    order = []
    succ = g.succ
    while generation:
        order.extend(generation)
        nxt = []
        for v in generation:
            for w in succ[v]:
                d = indeg[w] - 1
                indeg[w] = d
                if d == 0:
                    nxt.append(w)
        generation = nxt
    if len(order) == len(indeg):
        return order, None
    pred = g.pred
    left = {v for v, d in indeg.items() if d > 0}
    v = next(v for v in g if v in left)
    seen: dict = {}
    walk = []
    while v not in seen:
        seen[v] = len(walk)
        walk.append(v)
        v = next(u for u in pred[v] if u in left)
    cycle = walk[seen[v]:]
    cycle.reverse()
    return order, cycle


class Graph:
    """A computation graph of forward nodes, some with inverses.

    Parameters
    ----------
    name : str
        A label for reports.
    dtype : numpy dtype
        ``float32`` (fast; the default) or ``float64`` (for gradient checks).
    merge : str
        Name of the default merge strategy (see :mod:`tpgraph.merges`);
        ``"linear"`` is the paper's rule.

    Examples
    --------
    >>> g = Graph(dtype="float64")
    >>> g.input("x", size=3)
    >>> g.index_input("label", num_classes=2)
    >>> g.dense("h", ["x"], size=4, act="tanh", weights=["W1"], bias="b1")
    >>> g.softmax_output("y", ["h"], size=2, weights=["W2"], bias="b2")
    >>> g.cross_entropy("loss", "y", "label")
    >>> sorted(g.param_shapes().items())
    [('W1', (4, 3)), ('W2', (2, 4)), ('b1', (4,)), ('b2', (2,))]
    """

    def __init__(self, name: str = "graph", dtype="float32", merge: str = "linear"):
        self.name = name
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise GraphError(f"graph {name!r}: dtype must be float32 or float64, got {dtype!r}") from None
        if dt.type not in DTYPES:
            raise GraphError(f"graph {name!r}: dtype must be float32 or float64, got {dt}")
        self.dtype = dt
        check_merge(merge, f"graph {name!r}")
        self.merge = merge
        self.nx = nx.DiGraph(name=name)
        self.inits: dict[str, object] = {}
        self.cuts: set[tuple[str, str]] = set()  # edges (source, consumer) on which no credit flows
        self._size_memo: dict | None = None  # sizes of add nodes, only while validating

    # ---------------------------------------------------------------- declaring
    def add(self, node: Node) -> Node:
        """Add a node; its input edges are added now, inputs may be declared later."""
        if not isinstance(node, Node):
            raise GraphError(f"graph {self.name!r}: can only add Node objects, got {type(node).__name__}")
        if node.name in self.nx and "node" in self.nx.nodes[node.name]:
            raise GraphError(f"node {node.name!r} is declared twice")
        self.nx.add_node(node.name, node=node)
        for slot, (u, rule) in enumerate(zip(node.inputs, node.rules)):
            self.nx.add_edge(u, node.name, slot=slot, rule=rule)
        return node

    def input(self, name: str, size: int) -> None:
        """Declare real-valued data ``[B, size]``."""
        self.add(Input(name, size=size))

    def index_input(self, name: str, num_classes: int) -> None:
        """Declare integer data ``[B]`` (one-hot input to dense nodes, or labels)."""
        self.add(IndexInput(name, num_classes=num_classes))

    def dense(self, name, inputs, size, act="tanh", weights=None, bias=None, rules=None, **kw) -> None:
        """Declare ``act(sum_i W_i h_i + b)``; ``weights`` defaults to ``W_<name>_<input>``."""
        inputs = _input_names(name, inputs)
        weights = weights if weights is not None else tuple(f"W_{name}_{u}" for u in inputs)
        self.add(Dense(name, inputs, rules or (), size=size, act=act, weights=weights, bias=bias, **kw))

    def softmax_output(self, name, inputs, size, weights=None, bias=None, rules=None, **kw) -> None:
        """Declare a linear layer whose value is logits for a softmax / cross-entropy."""
        inputs = _input_names(name, inputs)
        weights = weights if weights is not None else tuple(f"W_{name}_{u}" for u in inputs)
        self.add(SoftmaxOutput(name, inputs, rules or (), size=size, weights=weights, bias=bias, **kw))

    def add_node(self, name, inputs, rules=None, **kw) -> None:
        """Declare an elementwise sum of equally sized inputs."""
        self.add(Add(name, _input_names(name, inputs), rules or (), **kw))

    def multiply(self, name, inputs, rules=None, **kw) -> None:
        """Declare an elementwise product of two or more equally sized inputs (edges: ``gradient``)."""
        self.add(Multiply(name, _input_names(name, inputs), rules or (), **kw))

    def activation(self, name, input, act="tanh", rules=None, **kw) -> None:
        """Declare a parameter-free ``act(input)``; ``dtp``/``tp`` edges use its exact inverse where one exists."""
        self.add(Activation(name, _input_names(name, input), rules or (), act=act, **kw))

    def scale(self, name, input, factor, rules=None, **kw) -> None:
        """Declare ``factor * input`` with a fixed non-zero ``factor`` (``-1``: a negation)."""
        self.add(Scale(name, _input_names(name, input), rules or (), factor=factor, **kw))

    def cross_entropy(self, name, logits, labels, reduction="mean", rule="gradient", alpha=None) -> None:
        """Declare a cross-entropy loss of ``softmax(logits)`` against integer ``labels``."""
        self.add(CrossEntropy(name, (logits, labels), (rule, "none"), reduction=reduction, alpha=alpha))

    def mse(self, name, prediction, target, reduction="mean", rule="gradient", alpha=None) -> None:
        """Declare a squared-error loss ``1/2 ||prediction - target||^2`` per sample."""
        self.add(MSE(name, (prediction, target), (rule, "none"), reduction=reduction, alpha=alpha))

    def add_inverse(self, node: str, of: str, weight: str | None = None, bias: str | None = None, act: str | None = None,
                    others: str = "forward", noise: float = 0.0, slope: float = 0.01,
                    loss: str = "reconstruction", kind: str = "learned", reg: float = ANALYTIC_REG,
                    clip: float = ANALYTIC_CLIP, context: str | None = None,
                    context_size: int | None = None) -> None:
        """Attach an inverse ``g`` of dense ``node`` with respect to its input ``of`` (learned by default).

        ``g(h) = act(V h + others + c)`` with ``V`` = group ``weight`` and ``c`` =
        group ``bias``; ``others="forward"`` adds the node's other inputs through
        its forward weights (the paper's ``G``), ``"none"`` leaves them out;
        ``noise`` is the denoising sigma on the input when training ``g``.
        ``loss`` is the objective that trains ``g``: ``"reconstruction"``
        (``1/2 ||g(f(h_u + eps)) - (h_u + eps)||^2``) or ``"difference"``
        (``1/2 ||g(f(h_u + eps)) - g(f(h_u)) - eps||^2``, Meulemans et al.
        2020; needs ``noise > 0``) or ``"jacobian"`` (Ernoult et al. 2022;
        needs ``noise > 0``), or a loss registered with
        :func:`~tpgraph.inverse_losses.register_inverse_loss`. See
        :class:`~tpgraph.nodes.Inverse`. ``act`` defaults to the kind's own
        (``identity`` for the adjoint kind), else ``"tanh"``.

        ``kind`` names the inverse kind (:mod:`tpgraph.inverses`): ``"learned"``
        (the above), ``"adjoint"`` (``g(h) = V phi(h) + others + c``, linear in
        the node's adjoint features, ``phi(h) = h - h^3/3`` for tanh; trained
        like the learned kind) or ``"analytic"``, the regularised inverse of a tanh node
        ``(W_u^T W_u + reg I)^-1 W_u^T (atanh(clip(h)) - others - b)``, which
        takes no ``weight``, ``bias`` or ``noise`` (nothing is trained) and uses
        ``reg > 0`` and ``clip`` (atanh's argument into ``[-1 + clip, 1 - clip]``);
        ``reg`` and ``clip`` are ignored by the other kinds.

        ``context`` (a group name, learned kind only) makes ``g`` a many-to-one
        ("joint") inverse that also reads the value, and at the targets the
        target, of the one other consumer ``s`` of ``of`` through that group
        (``[n_of, n_s]``): ``g(h, h_s) = act(V h + V_s h_s + others + c)``.
        Cut the edge ``of -> s`` (:meth:`cut`) where the joint inverse replaces
        the merge. ``context_size`` gives ``n_s`` where no consumer of the
        graph has a sibling to take it from. See :class:`~tpgraph.nodes.Inverse`.
        """
        n = self.node(node)
        if not isinstance(n, Dense):
            raise GraphError(f"node {node!r} ({n.kind}) cannot carry an inverse: only dense nodes can")
        if of not in n.inputs:
            raise GraphError(f"inverse of node {node!r} with respect to {of!r}: {of!r} is not one of its inputs {list(n.inputs)}")
        where = f"inverse of node {node!r} with respect to {of!r}"
        impl = get_inverse_kind(kind, where)
        if act is None:  # the kind's own (identity for the adjoint inverse), else tanh
            act = impl.fixed_act or "tanh"
        if act not in ACTIVATIONS:
            raise GraphError(f"inverse of node {node!r}: unknown activation {act!r}; known: {', '.join(ACTIVATIONS)}")
        if others not in ("forward", "none"):
            raise GraphError(f"inverse of node {node!r}: others must be 'forward' or 'none', got {others!r}")
        if not (isinstance(noise, (int, float)) and not isinstance(noise, bool) and np.isfinite(noise) and noise >= 0):
            raise GraphError(f"inverse of node {node!r}: noise must be a finite number >= 0, got {noise!r}")
        if not (isinstance(slope, (int, float)) and not isinstance(slope, bool) and np.isfinite(slope)):
            raise GraphError(f"inverse of node {node!r}: slope must be a finite number, got {slope!r}")
        if impl.has_params and (not isinstance(weight, str) or not weight
                                or (bias is not None and (not isinstance(bias, str) or not bias))):
            raise GraphError(f"inverse of node {node!r}: weight and bias must be group names, got {weight!r}, {bias!r}")
        objective = get_inverse_loss(loss, where)
        if objective.needs_noise and noise == 0:
            raise GraphError(f"inverse of node {node!r} with respect to {of!r}: loss {loss!r} "
                             f"(see tpgraph.nodes.Inverse) is identically 0 without noise; "
                             f"give noise > 0 or use loss 'reconstruction'")
        if not objective.takes_context and context is not None:
            raise GraphError(f"inverse of node {node!r} with respect to {of!r}: loss {loss!r} is for an "
                             f"inverse without a context (a one-to-one g)")
        if context is not None:
            if not impl.supports_context:
                raise GraphError(f"{where}: kind {kind!r} takes no context (a many-to-one inverse is learned: "
                                 f"use kind='learned'), got context={context!r}")
            if not isinstance(context, str) or not context:
                raise GraphError(f"{where}: context must be a parameter group name, got {context!r}")
            if context in (weight, bias):
                raise GraphError(f"{where}: context group {context!r} is also the inverse's weight or bias; "
                                 f"name a group of its own")
        if context_size is not None and (isinstance(context_size, bool) or not isinstance(context_size, int)
                                         or context_size < 1):
            raise GraphError(f"{where}: context_size must be a positive int, got {context_size!r}")
        if context_size is not None and context is None:
            raise GraphError(f"{where}: context_size without a context group")
        inv = Inverse(of=of, weight=weight, bias=bias, act=act, others=others, noise=float(noise),
                      slope=float(slope), loss=loss, kind=kind,
                      reg=float(reg) if isinstance(reg, (int, float)) and not isinstance(reg, bool) else reg,
                      clip=float(clip) if isinstance(clip, (int, float)) and not isinstance(clip, bool) else clip,
                      context=context, context_size=context_size)
        impl.check(n, inv, where)
        n.inverses[of] = inv

    def set_rule(self, consumer: str, input: str, rule: str) -> None:
        """Change the credit rule of edge ``input -> consumer``."""
        n = self.node(consumer)
        if input not in n.inputs:
            raise GraphError(f"there is no edge {input!r} -> {consumer!r}; inputs of {consumer!r}: {list(n.inputs)}")
        get_rule(rule, f"edge {input!r} -> {consumer!r}")
        slot = n.inputs.index(input)
        n.rules = n.rules[:slot] + (rule,) + n.rules[slot + 1:]
        self.nx.edges[input, consumer]["rule"] = rule

    def cut(self, source: str, consumer: str) -> None:
        """Cut the credit on edge ``source -> consumer``: no target flows on it, whatever its rule.

        The edge keeps its rule (so the nodes still stack and scan together);
        its proposal is simply not delivered. Cutting the recurrent edges of
        an unrolled RNN every ``k`` steps is truncated target propagation (or,
        with ``gradient`` rules, truncated BPTT): targets then travel back at
        most to the start of their segment. The edge stays in the forward pass.
        """
        if not self.nx.has_edge(source, consumer) or "node" not in self.nx.nodes[consumer]:
            raise GraphError(f"graph {self.name!r}: cannot cut {source!r} -> {consumer!r}, there is no such edge")
        self.nx.edges[source, consumer]["cut"] = True
        self.cuts.add((source, consumer))

    def uncut(self, source: str, consumer: str) -> None:
        """Undo :meth:`cut` on edge ``source -> consumer`` (credit flows on it again)."""
        if (source, consumer) not in self.cuts:
            raise GraphError(f"graph {self.name!r}: edge {source!r} -> {consumer!r} is not cut")
        self.cuts.discard((source, consumer))
        self.nx.edges[source, consumer]["cut"] = False

    def context_cuts(self) -> set:
        """The cut edges ``u -> s`` that a joint inverse replaces (``s`` the context sibling of an inverse of ``u``).

        They are part of the many-to-one inverse, not truncation: a gradient
        reference of the graph (:func:`tpgraph.alignment.reference_engine`)
        restores them.
        """
        out = set()
        for n in self.nodes:
            for of, inv in getattr(n, "inverses", {}).items():
                if inv.context is None or of not in self.nx:
                    continue
                s = self.sibling(n.name, of)
                if s is not None and (of, s.name) in self.cuts:
                    out.add((of, s.name))
        return out

    def init(self, group: str, spec) -> None:
        """Set the initialiser of parameter group ``group``.

        ``spec``: ``"zeros"``, ``"orthogonal"``, ``"normal:STD"``, ``"uniform:A"``,
        ``"glorot"``, an array of the group's shape, or ``callable(rng, shape)``.
        """
        make_init(spec, group)  # validates now
        self.inits[group] = spec

    def with_rules(self, mapping: Mapping[str, str] | str) -> "Graph":
        """A copy of this graph with credit rules replaced.

        ``mapping`` maps old rule names to new ones (``{"dtp": "gradient"}``),
        or is one rule name applied to every credit edge (all but ``none`` and
        losses' label edges; a loss's prediction edge only takes rules fit
        for losses, ``gradient``). ``g.with_rules("gradient")`` is the graph's
        backpropagation baseline, ``g.with_rules("fa")`` its feedback-alignment
        variant, both with the same parameter groups.
        """
        new = copy.deepcopy(self)
        for v, data in new.nx.nodes(data=True):
            n = data.get("node")
            if n is None:
                continue
            for slot, (u, r) in enumerate(zip(n.inputs, n.rules)):
                if not get_rule(r).carries_credit:
                    continue
                target = mapping if isinstance(mapping, str) else mapping.get(r, r)
                if n.is_loss and not get_rule(target, f"edge {u!r} -> {v!r}").for_losses:
                    continue
                new.set_rule(v, u, target)
        return new

    @classmethod
    def from_networkx(cls, g: nx.DiGraph, name: str | None = None, dtype="float32", merge="linear") -> "Graph":
        """Build a graph from a networkx DiGraph whose nodes carry declarations.

        Each node has either a ``node`` attribute (a :class:`Node`) or a
        ``kind`` attribute naming a node kind plus that kind's fields as
        attributes (``inputs`` in slot order; default: the predecessors in
        sorted order). Edge attribute ``rule`` sets the credit rule; ``cut=True`` cuts the edge's credit (:meth:`cut`).
        """
        out = cls(name or g.graph.get("name", "graph"), dtype=dtype, merge=merge)
        for v, data in g.nodes(data=True):
            if "node" in data:
                out.add(copy.deepcopy(data["node"]))
                continue
            kind = data.get("kind")
            if kind not in KINDS:
                raise GraphError(f"node {v!r}: unknown kind {kind!r}; known: {', '.join(KINDS)}")
            fields = {k: val for k, val in data.items() if k not in ("kind", "inverses")}
            if "inputs" not in fields:
                fields["inputs"] = tuple(sorted(g.predecessors(v)))
            if "rules" not in fields and "inputs" in fields and not KINDS[kind].is_loss:
                fields["rules"] = tuple(g.edges[u, v].get("rule", "gradient") if g.has_edge(u, v) else "gradient"
                                        for u in fields["inputs"])
            try:
                node = KINDS[kind](v, **fields)
            except TypeError as exc:
                raise GraphError(f"node {v!r} ({kind}): bad attributes: {exc}") from None
            out.add(node)
            invs = data.get("inverses", {})
            if not isinstance(invs, Mapping):
                raise GraphError(f"node {v!r}: attribute 'inverses' must map an input name to an inverse "
                                 f"(a tpgraph.Inverse or a dict of its fields), got {invs!r}")
            allowed = {"weight", "bias", "act", "others", "noise", "slope", "loss", "kind", "reg", "clip",
                       "context", "context_size"}
            for of, inv in invs.items():
                if isinstance(inv, Inverse):
                    fields = {k: getattr(inv, k) for k in allowed}
                elif isinstance(inv, Mapping):
                    fields = {k: val for k, val in inv.items() if k != "of"}
                else:
                    raise GraphError(f"node {v!r}: the inverse for {of!r} must be a tpgraph.Inverse or a dict, got {inv!r}")
                bad = sorted(set(fields) - allowed)
                needs_weight = get_inverse_kind(fields.get("kind", "learned"),
                                                f"node {v!r}: the inverse for {of!r}").has_params
                if bad or ("weight" not in fields and needs_weight):
                    raise GraphError(f"node {v!r}: the inverse for {of!r} has unknown fields {bad} or no 'weight'; "
                                     f"allowed: {sorted(allowed)}")
                out.add_inverse(v, of=of, **fields)
        for u, v, cut in g.edges(data="cut"):
            if cut:
                out.cut(u, v)
        return out

    # ---------------------------------------------------------------- reading
    def node(self, name: str) -> Node:
        """The declared node ``name``."""
        try:  # networkx's node-attribute dict itself: the NodeView costs a Python call, and this runs per edge
            return self.nx._node[name]["node"]
        except (KeyError, TypeError):  # not in the graph, only named as an input, or not a name
            raise GraphError(f"graph {self.name!r} has no node {name!r}") from None

    @property
    def nodes(self) -> list[Node]:
        """All declared nodes, in declaration order."""
        return [d["node"] for d in self.nx._node.values() if "node" in d]  # the attribute dicts, not a NodeView

    def __len__(self):
        return self.nx.number_of_nodes()

    def __repr__(self):
        return f"Graph({self.name!r}, {len(self)} nodes, dtype={self.dtype.name}, merge={self.merge!r})"

    # ---------------------------------------------------------------- validating
    def validate(self) -> list[str]:
        """Check the whole declaration; return the nodes in topological order.

        Raises
        ------
        GraphError
            naming the culprit: a missing input, a cycle (shown), an unknown
            kind, a shape mismatch (both shapes), a ``dtp``/``tp`` edge with no
            inverse, a parameter group used with two shapes, a loss with
            nothing to compare against.
        """
        return self._validated()[0]

    def _validated(self) -> tuple[list[str], dict[str, tuple]]:
        """:meth:`validate`'s order and the :meth:`param_shapes` it checked (the plan keeps both)."""
        g = self.nx
        if g.number_of_nodes() == 0:
            raise GraphError(f"graph {self.name!r} is empty")
        for v, data in g.nodes(data=True):
            if "node" not in data:
                users = sorted(g.successors(v))
                raise GraphError(f"node {users[0]!r} has a missing input: {v!r} was never declared "
                                 f"(needed by {users})")
            if not isinstance(data["node"], Node):
                raise GraphError(f"node {v!r}: attribute 'node' is {type(data['node']).__name__}, not a tpgraph Node")
        order, cycle = topological_order(g)
        if cycle:
            path = " -> ".join(cycle + [cycle[0]])
            raise GraphError(f"graph {self.name!r} has a cycle: {path}")
        self._size_memo = {}
        try:
            for v in order:
                self._validate_node(self.node(v))
            shapes = self.param_shapes()
        finally:
            self._size_memo = None
        unknown = sorted(set(self.inits) - set(shapes))
        if unknown:
            raise GraphError(f"graph {self.name!r}: initialisers given for parameter group(s) {unknown} that no "
                             f"node uses; groups: {sorted(shapes)}")
        if not any(n.is_loss for n in self.nodes):
            raise GraphError(f"graph {self.name!r} has no loss node: nothing proposes targets")
        return order, shapes

    def _size(self, name):
        memo = getattr(self, "_size_memo", None)  # set while validating: each add is walked once
        if memo is not None and name in memo:
            return memo[name]
        n = self.node(name)
        if not isinstance(n, (Add, Elementwise)):  # the common case: a node of its own size
            return n.size
        seen = {}
        size = None
        while isinstance(n, (Add, Elementwise)) and n.inputs and name not in seen:  # as wide as its inputs
            seen[name] = True
            name = n.inputs[0]
            if memo is not None and name in memo:
                size = memo[name]
                break
            if name not in self.nx or "node" not in self.nx.nodes[name]:
                size = 0
                break
            n = self.node(name)
        if size is None:
            size = n.size
        if memo is not None:
            memo.update(dict.fromkeys(seen, size))
        return size

    def _validate_node(self, n: Node) -> None:
        sizes = [self._size(u) for u in n.inputs]
        if isinstance(n, Dense):
            for u, r in zip(n.inputs, n.rules):
                src = self.node(u)
                if src.is_loss:
                    raise GraphError(f"edge {u!r} -> {n.name!r}: a loss cannot feed another node")
                if get_rule(r).needs_inverse and u not in n.inverses:
                    raise GraphError(
                        f"edge {u!r} -> {n.name!r} has credit rule {r!r} but node {n.name!r} "
                        f"({n.kind}) has no inverse with respect to {u!r}; add one with "
                        f"graph.add_inverse({n.name!r}, of={u!r}, ...) or use rule 'gradient'"
                    )
            for of, inv in n.inverses.items():
                if of not in n.inputs:
                    raise GraphError(f"inverse of node {n.name!r} with respect to {of!r}: not an input of {n.name!r}")
                where = f"inverse of node {n.name!r} with respect to {of!r}"
                impl = get_inverse_kind(inv.kind, where)
                impl.check(n, inv, where)
                if isinstance(self.node(of), IndexInput):
                    raise GraphError(f"inverse of node {n.name!r} with respect to {of!r}: integer data has no inverse")
                if inv.context is not None:
                    self._validate_context(n, of, inv, where)
                # the other inputs are summed into the inverse's buffer og: it must be as wide as the node
                if inv.others == "forward" and len(n.inputs) > 1 and impl.og_size(self._size(of), n.size) != n.size:
                    raise GraphError(
                        f"inverse of node {n.name!r} with respect to {of!r}: others='forward' adds the other "
                        f"inputs through {n.name!r}'s forward weights, which map into shape ({n.size},), but "
                        f"{of!r} has shape ({self._size(of)},); use others='none' or equal sizes")
        elif isinstance(n, Add):
            for u in n.inputs:
                if self.node(u).is_loss:
                    raise GraphError(f"edge {u!r} -> {n.name!r}: a loss cannot feed another node")
                if isinstance(self.node(u), IndexInput):
                    raise GraphError(f"add node {n.name!r}: input {u!r} is integer data; add takes real-valued inputs")
            for u, r in zip(n.inputs, n.rules):
                rule = get_rule(r)
                if rule.needs_inverse or rule.needs_weights:
                    raise GraphError(f"edge {u!r} -> {n.name!r} has credit rule {r!r}, which needs "
                                     f"{rule.requirement()}, but add node {n.name!r} has no weights and no "
                                     f"inverse; use 'gradient' (its Jacobian is the identity)")
            if len(set(sizes)) == 1:
                n.size = sizes[0]
            if len(set(sizes)) > 1:
                detail = ", ".join(f"{u!r}: ({s},)" for u, s in zip(n.inputs, sizes))
                raise GraphError(f"add node {n.name!r}: shape mismatch between its inputs: {detail}")
        elif isinstance(n, Elementwise):
            self._validate_elementwise(n, sizes)
        elif isinstance(n, CrossEntropy):
            pred, lab = n.inputs
            if not isinstance(self.node(pred), SoftmaxOutput):
                raise GraphError(f"cross-entropy {n.name!r}: its prediction {pred!r} must be a softmax output (logits), "
                                 f"got {self.node(pred).kind}")
            if not isinstance(self.node(lab), IndexInput):
                raise GraphError(f"cross-entropy {n.name!r} has nothing to compare against: {lab!r} must be "
                                 f"integer labels (an index input), got {self.node(lab).kind}")
            if self.node(lab).num_classes != sizes[0]:
                raise GraphError(f"cross-entropy {n.name!r}: shape mismatch: logits {pred!r} have shape ({sizes[0]},) "
                                 f"but labels {lab!r} have {self.node(lab).num_classes} classes")
        elif isinstance(n, MSE):
            pred, tgt = n.inputs
            for u in n.inputs:
                if self.node(u).is_loss:
                    raise GraphError(f"edge {u!r} -> {n.name!r}: a loss cannot feed another node")
            if isinstance(self.node(tgt), IndexInput) or isinstance(self.node(pred), IndexInput):
                raise GraphError(f"mse {n.name!r}: compares real-valued nodes; use cross_entropy for integer labels")
            if sizes[0] != sizes[1]:
                raise GraphError(f"mse {n.name!r}: shape mismatch: prediction {pred!r} has shape ({sizes[0]},), "
                                 f"target {tgt!r} has shape ({sizes[1]},)")
        merge = getattr(n, "merge", None)
        if merge is not None:
            check_merge(merge, f"node {n.name!r}")

    def sibling(self, node: str, of: str):
        """The one consumer of ``of`` other than ``node`` (a joint inverse's context), or None if there is none.

        Raises a GraphError naming both when ``of`` has more than one other
        consumer, or one that is not a dense node.
        """
        others = [c for c in self.nx.succ[of] if c != node]
        if not others:
            return None
        where = f"inverse of node {node!r} with respect to {of!r}"
        if len(others) > 1:
            raise GraphError(f"{where}: its context is the one other consumer of {of!r}, but {of!r} feeds "
                             f"{sorted(others)} besides {node!r}")
        s = self.node(others[0])
        if not isinstance(s, Dense):
            raise GraphError(f"{where}: the other consumer {s.name!r} of {of!r} is a {s.kind} node; a context "
                             f"must be a dense node (its value act(W h + ... + b) is recomputed from a "
                             f"corrupted {of!r} when the inverse is trained)")
        return s

    def _validate_context(self, n: Dense, of: str, inv: Inverse, where: str) -> None:
        """A joint inverse: at most one dense sibling, of the context's width, before the rule that uses it."""
        if not inv.impl.supports_context:
            raise GraphError(f"{where}: kind {inv.kind!r} takes no context (a many-to-one inverse is learned: "
                             f"use kind='learned'), got context={inv.context!r}")
        rule = get_rule(n.rules[n.inputs.index(of)])
        if rule.needs_inverse and not rule.takes_context:
            raise GraphError(f"{where}: edge {of!r} -> {n.name!r} has rule {rule.name!r}, which does not take "
                             f"a many-to-one inverse (context {inv.context!r}); use 'dtp' or 'tp'")
        s = self.sibling(n.name, of)
        if s is not None and inv.context_size is not None and s.size != inv.context_size:
            raise GraphError(f"{where}: context {inv.context!r} reads {s.name!r} of shape ({s.size},), but "
                             f"context_size is {inv.context_size}")

    def _validate_elementwise(self, n: Elementwise, sizes: list) -> None:
        """Inputs real-valued and of one width; each edge's rule one the kind can honour."""
        for u in n.inputs:
            if self.node(u).is_loss:
                raise GraphError(f"edge {u!r} -> {n.name!r}: a loss cannot feed another node")
            if isinstance(self.node(u), IndexInput):
                raise GraphError(f"{n.kind} node {n.name!r}: input {u!r} is integer data; {n.kind} takes "
                                 f"real-valued inputs (feed the tokens through a dense node)")
        for u, r in zip(n.inputs, n.rules):
            rule = get_rule(r)
            if rule.needs_weights or rule.needs_feedback:
                raise GraphError(f"edge {u!r} -> {n.name!r} has credit rule {r!r}, which needs "
                                 f"{rule.requirement()}, but {n.kind} node {n.name!r} has no weights; use "
                                 f"'gradient' (its local Jacobian is diagonal)")
            if rule.needs_inverse and not n.has_inverse():
                raise GraphError(f"edge {u!r} -> {n.name!r} has credit rule {r!r}, which needs an inverse, but "
                                 f"{n.kind} node {n.name!r} has {n.no_inverse_reason()}; use rule 'gradient'")
        if len(set(sizes)) > 1:
            detail = ", ".join(f"{u!r}: ({s},)" for u, s in zip(n.inputs, sizes))
            raise GraphError(f"{n.kind} node {n.name!r}: shape mismatch between its inputs: {detail}")
        n.size = sizes[0]

    def param_shapes(self) -> dict[str, tuple]:
        """Shapes of all parameter groups; a group used with two shapes is an error."""
        shapes: dict[str, tuple] = {}
        where: dict[str, tuple] = {}  # the first user of each group: a template and its arguments

        def use(group, shape, *by):  # ``by`` is formatted only for an error (this runs per edge)
            if group not in shapes:
                shapes[group] = shape
                where[group] = by
            elif shapes[group] != shape:
                first, this = (b[0].format(*b[1:]) for b in (where[group], by))
                raise GraphError(
                    f"parameter group {group!r} is used with two different shapes: {shapes[group]} by "
                    f"{first} and {shape} by {this}"
                )

        for n in self.nodes:
            if not isinstance(n, Dense):
                continue
            for u, w in zip(n.inputs, n.weights):
                use(w, (n.size, self._size(u)) if u in self.nx and "node" in self.nx.nodes[u] else None,
                    "node {!r} (input {!r})", n.name, u)
            if n.bias is not None:
                use(n.bias, (n.size,), "node {!r} (bias)", n.name)
            for of, inv in n.inverses.items():
                if not inv.impl.has_params:  # e.g. the analytic inverse: no groups of its own
                    continue
                use(inv.weight, (self._size(of), n.size), "inverse of {!r} w.r.t. {!r}", n.name, of)
                if inv.bias is not None:
                    use(inv.bias, (self._size(of),), "inverse of {!r} w.r.t. {!r} (bias)", n.name, of)
                if inv.context is not None:
                    sib = self.sibling(n.name, of) if of in self.nx else None
                    size = sib.size if sib is not None else inv.context_size
                    if size is None:
                        raise GraphError(f"inverse of node {n.name!r} with respect to {of!r}: context "
                                         f"{inv.context!r} has no shape: {of!r} has no other consumer to take it "
                                         f"from; give context_size")
                    use(inv.context, (self._size(of), size), "inverse of {!r} w.r.t. {!r} (context)", n.name, of)
        return shapes

    def init_params(self, seed: int = 0) -> ParamStore:
        """Fresh parameters for every group, from the groups' initialisers, seeded."""
        shapes = self.param_shapes()
        unknown = sorted(set(self.inits) - set(shapes))
        if unknown:
            raise GraphError(f"graph {self.name!r}: initialisers given for parameter group(s) {unknown} that no "
                             f"node uses; groups: {sorted(shapes)}")
        rng = np.random.default_rng(seed)
        values = {}
        for group in sorted(shapes):
            shape = shapes[group]
            spec = self.inits.get(group, "zeros" if len(shape) == 1 else "glorot")
            value = np.asarray(make_init(spec, group)(rng, shape))
            if not np.issubdtype(value.dtype, np.number) or np.iscomplexobj(value) or not np.all(np.isfinite(value)):
                raise GraphError(f"initialiser of group {group!r} produced non-finite or non-real values")
            values[group] = value.astype(self.dtype)
        return ParamStore(values, self.dtype)
