"""Compile a validated graph into a static plan of *stacks*.

A stack is a set of nodes with the same signature (kind, sizes, parameter
groups, credit rules, inverse, merge) whose inputs come from the same stacks:
the ``L`` hidden states of an unrolled RNN, its ``L`` outputs, its ``L``
losses. The engine runs each stack with a few large kernel calls over all
``m * B`` rows at once. A stack whose member ``k`` takes member ``k - 1`` as
one input (a *chain*, the recurrence through time) runs that input as a scan:
one compiled loop over the members, everything else still batched.

How stacks are found (graph -> stacks, once per graph):

1. nodes get a local signature; data nodes also by which consumers they feed;
2. partition refinement: a node's key is its signature plus, for each input
   slot, the group of its source — or ``"self"`` when that slot links the
   group to itself (the recurrent slot of a chain) — until the partition is
   stable;
3. a group with a self-link must be one chain (dense kind, one recurrent
   slot, member ``k`` fed by member ``k-1``); a group that is not, and any
   groups on a cycle of the stack graph, are split into single nodes and the
   refinement runs again. Single nodes are always valid stacks, so this
   terminates, and any DAG compiles; the SRN compiles to a handful of stacks.

Nothing here touches arrays of a batch: buffers are made per batch size by
:class:`tpgraph.engine.Engine` from this plan, and the per-batch loop never
touches networkx.
"""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from .graph import Graph, topological_order
from .kernels.activations import ACTIVATIONS, TANH, TANH_FAST
from .merges import get_merge, merge_kind
from .nodes import Dense, IndexInput, Inverse, Node
from .rules import CreditRule, get_rule


@dataclass(repr=False)
class ContextLink:
    """Where a joint inverse (``Inverse.context``) of a slot reads its context: the siblings, all in one stack.

    Member ``k`` of the consumer stack reads member ``rows[k]`` of stack
    ``src`` (``-1``: no sibling, the context contributes zero). The sibling
    takes the inverted input through its slot ``slot`` with forward weight
    ``weight``; ``group`` is the inverse's context group ``V_s`` ``[n_u, size]``.
    """

    src: int
    rows: np.ndarray
    slot: int
    weight: str
    group: str
    size: int

    def __repr__(self):
        return f"ContextLink(stack {self.src}, rows={self.rows.tolist()}, group={self.group!r})"


@dataclass(repr=False)
class Slot:
    """Input slot ``index`` of every member of a stack."""

    index: int
    src: int  # source stack id
    rows: object  # slice or int array: source member of each consumer member (None if recurrent)
    rule: str
    propose: bool  # does a proposal flow to the source?
    weight: str | None = None
    inverse: Inverse | None = None
    recurrent: bool = False
    src_is_index: bool = False
    src_size: int = 0
    credit: CreditRule | None = None  # the rule object of ``rule`` (what it needs, how it proposes)
    # weighted merges of the source: the scale of each consumer member's delivered displacement (None: 1)
    deliver_scale: np.ndarray | None = None
    # cut credit (Graph.cut): per consumer member, True where its proposal is not delivered (None: no cut)
    cut: np.ndarray | None = None
    # a joint inverse (Inverse.context): where each member reads its sibling's value and target (None: none)
    context: ContextLink | None = None

    def __repr__(self):
        kind = "recurrent" if self.recurrent else f"rows={self.rows}"
        return f"Slot({self.index}, src=stack {self.src}, {kind}, rule={self.rule!r}, propose={self.propose})"


@dataclass(repr=False)
class Stack:
    """Nodes run together: values ``[m, B, n]``."""

    id: int
    node: Node  # the first member; all members share its settings
    members: list[str]
    slots: list[Slot] = field(default_factory=list)
    needs_target: bool = False
    chain: bool = False
    rec_slot: int | None = None
    init_src: tuple[int, int] | None = None  # (stack, member) of the chain's initial recurrent input
    propose_init: bool = False  # does the chain's head propose a target to its initial input?
    cut_members: tuple = ()  # chain members k >= 1 whose recurrent proposal to member k - 1 is cut
    merge: str = "linear"
    counts: np.ndarray | None = None  # incoming proposals per member
    merge_scale: np.ndarray | None = None  # weighted merges: the per-member scale the scans apply
    incoming: list = field(default_factory=list)  # per member: [(stack id, slot index, consumer member)]

    @property
    def m(self) -> int:
        return len(self.members)

    @property
    def kind(self) -> str:
        return self.node.kind

    @property
    def size(self) -> int:
        return self.node.size

    @property
    def merge_kind(self) -> str:
        """How the merge runs: ``linear``, ``mean``, ``weighted``, ``jit`` (inside the kernels) or ``python``."""
        return merge_kind(self.merge)

    @property
    def fused_merge(self) -> bool:
        return self.merge_kind != "python"

    def __repr__(self):
        shape = "chain" if self.chain else "batch"
        head = self.members[0] if self.m == 1 else f"{self.members[0]}..{self.members[-1]}"
        return f"Stack({self.id}, {self.kind} x{self.m} [{head}], {shape}, merge={self.merge!r})"


@dataclass(repr=False)
class Plan:
    """The static plan of a graph: stacks in topological order and their wiring."""

    graph: Graph
    stacks: list[Stack]
    where: dict[str, tuple[int, int]]  # node -> (stack id, member index)
    forward_groups: list[str]
    inverse_groups: list[str]
    param_shapes: dict[str, tuple]  # the graph's groups and shapes, as validated

    def __repr__(self):
        return f"Plan({self.graph.name!r}: {len(self.where)} nodes in {len(self.stacks)} stacks)"

    def describe(self) -> str:
        """One line per stack, for reading the compiled structure."""
        return "\n".join(repr(s) for s in self.stacks)


def act_code(name: str, dtype, fast_tanh: bool) -> int:
    code = ACTIVATIONS[name]
    if code == TANH and fast_tanh and np.dtype(dtype) == np.float32:
        return TANH_FAST
    return code


def _needs_target(nodes: list[Node], ins: list[tuple[int, ...]]) -> list[bool]:
    """A node needs a target if it has parameters or credit can reach parameters through it.

    ``nodes`` in topological order and their inputs' positions (:func:`_index`).
    """
    need: list[bool] = []
    for n, srcs in zip(nodes, ins):
        if n.is_data or n.is_loss:
            need.append(False)
        elif n.has_params:
            need.append(True)
        else:
            need.append(any(get_rule(r).carries_credit and need[u] for u, r in zip(srcs, n.rules)))
    return need


def _index(graph: Graph, order: list[str]) -> tuple[list[Node], list[tuple[int, ...]]]:
    """The nodes in ``order`` and each node's inputs as positions in it.

    The grouping below works on these positions (lists indexed by integers)
    rather than on dictionaries keyed by names: the same linear work, with a
    fraction of the hashing and memory traffic on graphs of 10^4-10^5 nodes.
    """
    ndata = graph.nx.nodes
    nodes = [ndata[v]["node"] for v in order]
    pos = {v: i for i, v in enumerate(order)}
    return nodes, [tuple([pos[u] for u in n.inputs]) for n in nodes]


def _local_signatures(graph, nodes, need) -> list[tuple]:
    """Each node's local signature (kind, settings, rules, whether it needs a target)."""
    settings = {n.name: repr(n.settings()) for n in nodes}
    edges = graph.nx.succ
    sigs = []
    for n, needs in zip(nodes, need):
        # Sources are told apart by the refinement (their groups), not here: the
        # head of a chain has a source unlike its members' and must still match.
        sig = (type(n).__name__, settings[n.name], n.rules, needs)
        if n.is_data:  # data nodes also by which consumers they feed
            feeds = sorted((type(graph.node(c)).__name__, settings[c], data["slot"])
                           for c, data in edges[n.name].items())
            sig += (tuple(feeds),)
        sigs.append(sig)
    return sigs


def _refine(sigs, ins, forced) -> list[int]:
    """Partition refinement to a stable grouping; returns each node's group id.

    Group ids number the groups in order of their first node. A round costs
    one pass over nodes and edges; the key of a slot that links a group to
    itself is ``-1`` ("self"), so a chain does not split member by member.
    """
    ids: dict = {}
    group = [ids.setdefault(("single", v) if forced[v] else sig, len(ids)) for v, sig in enumerate(sigs)]
    count = len(ids)
    while True:
        self_slots: list[set] = [set() for _ in range(count)]
        for v, srcs in enumerate(ins):
            g = group[v]
            for i, u in enumerate(srcs):
                if group[u] == g:
                    self_slots[g].add(i)
        ids = {}
        new_group = []
        for v, srcs in enumerate(ins):
            g = group[v]
            own = self_slots[g]
            key = (g, tuple(-1 if i in own else group[u] for i, u in enumerate(srcs)))
            new_group.append(ids.setdefault(key, len(ids)))
        if len(ids) == count:
            return group
        group, count = new_group, len(ids)


def compile_plan(graph: Graph, stacking: bool = True, progress=None) -> Plan:
    """Validate ``graph`` and compile it into stacks (see the module docstring).

    ``stacking=False`` puts every node in a stack of its own (one kernel call
    per node): slower, the same results; useful as a reference and for debugging.
    ``progress``, if given, is called as ``progress("compiling", done, 4)``
    after each of the four phases (validation, grouping, stacks, wiring),
    from ``done=0`` before the first. Every phase is linear in the nodes and
    edges of the graph.
    """
    with paused_gc():
        return _compile_plan(graph, stacking, progress)


@contextlib.contextmanager
def paused_gc():
    """Pause Python's cyclic garbage collector while large structures are built (nested uses are fine).

    Declaring and compiling a graph allocate some ten objects per node and free
    few, so the collector's full passes find nothing and cost more the larger
    the graph: at L=8000 a fifth of the SRN's build time, ten times its share
    at L=2000 (CPU time, measured). Reference counting still frees everything
    at once; reference cycles made meanwhile are collected when it resumes.
    """
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def _compile_plan(graph: Graph, stacking: bool, progress) -> Plan:
    report = progress or (lambda stage, done, total: None)
    report("compiling", 0, 4)
    order, shapes = graph._validated()
    report("compiling", 1, 4)
    nodes, ins = _index(graph, order)
    need = _needs_target(nodes, ins)
    sigs = _local_signatures(graph, nodes, need)
    forced = [not stacking] * len(order)
    context_pairs = _context_pairs(graph, nodes, order)
    while True:
        group = _refine(sigs, ins, forced)
        members: list[list[int]] = [[] for _ in range(max(group) + 1)]
        for v, g in enumerate(group):
            members[g].append(v)
        bad: list[int] = []
        chains = []
        for gid, vs in enumerate(members):
            rec = _chain_slot(nodes, ins, vs, group, gid)
            if rec == "invalid":
                bad.extend(vs)
            chains.append(rec)
        if not bad:
            sg = nx.DiGraph()
            sg.add_nodes_from(range(len(members)))
            sg.add_edges_from(dict.fromkeys((group[u], gid) for gid, vs in enumerate(members) for v in vs
                                            for u in ins[v] if group[u] != gid))
            # a joint inverse reads its sibling's target: the sibling's stack comes later (earlier in the target pass)
            sg.add_edges_from(dict.fromkeys((group[v], group[s]) for v, s in context_pairs if group[v] != group[s]))
            stack_order, cycle = topological_order(sg)
            if cycle:
                for gid in cycle:
                    bad.extend(members[gid])
        bad = [v for v in bad if not forced[v]]
        if not bad:
            if cycle:  # only the context edges can close a cycle of single nodes
                from .errors import GraphError

                raise GraphError(f"graph {graph.name!r}: a joint inverse's context cannot be ordered: the "
                                 f"sibling's target must be final before the inverse reads it, but the nodes "
                                 f"{[order[members[gid][0]] for gid in cycle]} depend on each other")
            break
        for v in bad:
            forced[v] = True
    report("compiling", 2, 4)
    renumber = {gid: i for i, gid in enumerate(stack_order)}
    where = {}
    at: list = [None] * len(order)  # by position: (stack id, member index); ``where`` by name
    positions: list[list[int]] = []  # by stack id: the members' positions
    stacks = []
    for gid in stack_order:
        vs = members[gid]
        rec = chains[gid]
        if rec is not None:
            vs = _chain_order(ins, vs, rec, group, gid)
        names = [order[v] for v in vs]
        st = Stack(id=renumber[gid], node=nodes[vs[0]], members=names)
        st.needs_target = need[vs[0]]
        st.chain = rec is not None
        st.rec_slot = rec
        st.merge = getattr(st.node, "merge", None) or graph.merge
        for k, (v, name) in enumerate(zip(vs, names)):
            at[v] = where[name] = (st.id, k)
        positions.append(vs)
        stacks.append(st)
    for st in stacks:
        n0 = st.node
        first = positions[st.id][0]
        for i, u0 in enumerate(n0.inputs):
            rule = n0.rules[i]
            credit = get_rule(rule)
            src_node = nodes[ins[first][i]]
            propose = credit.carries_credit and need[ins[first][i]]
            slot = Slot(
                index=i, src=where[u0][0], rows=None, rule=rule, propose=bool(propose), credit=credit,
                weight=n0.weights[i] if isinstance(n0, Dense) else None,
                inverse=n0.inverses.get(u0) if isinstance(n0, Dense) else None,
                src_is_index=isinstance(src_node, IndexInput), src_size=src_node.size,
            )
            if st.chain and i == st.rec_slot:
                slot.recurrent = True
                slot.propose = credit.carries_credit  # members propose to their predecessors
                st.init_src = where[u0]
                st.propose_init = bool(propose)
            else:
                rows = np.array([at[ins[v][i]][1] for v in positions[st.id]], dtype=np.int64)
                if len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
                    slot.rows = slice(int(rows[0]), int(rows[0]) + len(rows))
                else:
                    slot.rows = rows
            st.slots.append(slot)
    report("compiling", 3, 4)
    _link_contexts(graph, stacks, positions, ins, order, where)
    if graph.cuts:
        _mark_cuts(graph, stacks, positions, ins, order)
    _wire_incoming(stacks, positions, ins, at)
    _weigh_merges(stacks)
    _silence_cuts(stacks)
    fwd, inv = set(), set()
    for n in graph.nodes:
        if isinstance(n, Dense):
            fwd.update(n.weights)
            if n.bias:
                fwd.add(n.bias)
            for i in n.inverses.values():
                inv.update(i.impl.groups(i))  # the inverse's own groups (none for the analytic kind)
    clash = fwd & inv
    if clash:
        from .errors import GraphError

        raise GraphError(f"parameter group(s) {sorted(clash)} are used both by forward nodes and by an "
                         f"inverse; an inverse trains its own groups and may only *use* forward weights "
                         f"through others='forward'")
    report("compiling", 4, 4)
    return Plan(graph, stacks, where, sorted(fwd), sorted(inv), shapes)


def _context_pairs(graph, nodes, order) -> list:
    """``(position of v, position of s)`` for each joint inverse of ``v`` whose input has a sibling ``s``."""
    pairs = []
    pos = None
    for p, n in enumerate(nodes):
        for of, inv in getattr(n, "inverses", {}).items():
            if inv.context is None or not get_rule(n.rules[n.inputs.index(of)]).needs_inverse:
                continue
            sib = graph.sibling(n.name, of)
            if sib is not None:
                if pos is None:
                    pos = {v: i for i, v in enumerate(order)}
                pairs.append((p, pos[sib.name]))
    return pairs


def _link_contexts(graph, stacks, positions, ins, order, where):
    """Each joint inverse's siblings (:class:`ContextLink`): one stack, one slot, processed before in the target pass.

    The target pass runs the stacks in reverse order, so a sibling stack that
    comes *later* has its targets final when the consumer's inverse reads
    them; the validation has already refused more than one sibling per member.
    """
    from .errors import GraphError

    for st in stacks:
        for slot in st.slots:
            inv = slot.inverse
            if inv is None or inv.context is None or not slot.credit.needs_inverse:
                continue
            rows = np.full(st.m, -1, dtype=np.int64)
            src = sib_slot = None
            for k, v in enumerate(positions[st.id]):
                u = order[ins[v][slot.index]]
                sib = graph.sibling(order[v], u)
                if sib is None:
                    continue
                sid, j = where[sib.name]
                i = sib.inputs.index(u)
                where_ = f"inverse of node {order[v]!r} with respect to {u!r} (context {inv.context!r})"
                if src is None:
                    src, sib_slot = sid, i
                elif (sid, i) != (src, sib_slot):
                    raise GraphError(f"{where_}: the siblings of the stack of {st.members[0]!r} must form one stack "
                                     f"and take the input through one slot; {sib.name!r} does not stack with "
                                     f"{stacks[src].members[0]!r}")
                if sid <= st.id:
                    raise GraphError(f"{where_}: the sibling {sib.name!r} comes before {order[v]!r} in the "
                                     f"target pass's order, so its target is not final when the inverse reads it")
                rows[k] = j
            if src is not None:
                sn = stacks[src].node
                slot.context = ContextLink(src=src, rows=rows, slot=sib_slot, weight=sn.weights[sib_slot],
                                           group=inv.context, size=sn.size)


def _chain_slot(nodes, ins, vs, group, gid):
    """The recurrent slot of group ``gid`` (members ``vs``) if it links to itself, None if not, or "invalid"."""
    n0 = nodes[vs[0]]
    rec = [i for i in range(len(ins[vs[0]])) if any(group[ins[v][i]] == gid for v in vs)]
    if not rec:
        return None
    if len(rec) > 1 or not isinstance(n0, Dense):
        return "invalid"
    i = rec[0]
    heads = [v for v in vs if group[ins[v][i]] != gid]
    if len(heads) != 1:
        return "invalid"
    succ = {}
    for v in vs:
        u = ins[v][i]
        if group[u] == gid:
            if u in succ:
                return "invalid"
            succ[u] = v
    # walk from the head: must visit every member
    seen, v = 1, heads[0]
    while v in succ:
        v = succ[v]
        seen += 1
    return i if seen == len(vs) else "invalid"


def _chain_order(ins, vs, rec, group, gid):
    """The members of a valid chain from its head, each fed by the one before."""
    succ = {ins[v][rec]: v for v in vs if group[ins[v][rec]] == gid}
    v = next(v for v in vs if group[ins[v][rec]] != gid)
    out = [v]
    while v in succ:
        v = succ[v]
        out.append(v)
    return out


def _mark_cuts(graph, stacks, positions, ins, order):
    """Each slot's cut members (:meth:`Graph.cut`), found by one pass over the slots' edges."""
    cuts = graph.cuts
    for st in stacks:
        for slot in st.slots:
            if not slot.propose:
                continue
            i = slot.index
            mask = np.array([(order[ins[v][i]], order[v]) in cuts for v in positions[st.id]], dtype=bool)
            if not mask.any():
                continue
            slot.cut = mask
            if slot.recurrent:
                st.cut_members = tuple(int(k) for k in np.flatnonzero(mask) if k >= 1)
                if mask[0]:
                    st.propose_init = False
            elif mask.all():
                slot.propose = False


def _silence_cuts(stacks):
    """A cut non-recurrent edge delivers its proposal scaled by zero (after any merge weights)."""
    for st in stacks:
        for slot in st.slots:
            if slot.cut is not None and not slot.recurrent and slot.propose:
                scale = np.ones(st.m) if slot.deliver_scale is None else slot.deliver_scale
                slot.deliver_scale = np.where(slot.cut, 0.0, scale)


def _wire_incoming(stacks, positions, ins, at):
    """For every node that needs a target, the proposals it receives (for merges and inspection).

    ``positions[s]``: the members of stack ``s`` as positions; ``ins``: each
    position's inputs; ``at``: each position's (stack id, member index).
    """
    for st in stacks:
        st.incoming = [[] for _ in range(st.m)]
    for st in stacks:
        for slot in st.slots:
            if not slot.propose:
                continue
            i = slot.index
            for k, v in enumerate(positions[st.id]):
                if slot.recurrent and k == 0 and not st.propose_init:
                    continue
                if slot.cut is not None and slot.cut[k]:
                    continue  # a cut edge delivers nothing (and counts for no merge)
                sid, j = at[ins[v][i]]
                stacks[sid].incoming[j].append((st.id, i, k))
    for st in stacks:
        st.counts = np.array([len(x) for x in st.incoming], dtype=np.int64)


def _weigh_merges(stacks):
    """Weighted merges as scaled accumulation: ``d_k = sum_i w_i p_i``, the weights fixed per path.

    A chain's scan merges the proposal of member ``k + 1`` into member ``k``
    as ``d_k = (d_k + p) * s_k``; with ``s_k`` = that path's weight, every
    other path into ``k`` is delivered scaled by ``w_i / s_k``. Outside a
    chain (and at its last member) ``s_k = 1`` and deliveries carry ``w_i``.
    """
    for st in stacks:
        if st.merge_kind != "weighted":
            continue
        weight = get_merge(st.merge)
        s = np.ones(st.m)
        if st.chain:
            cut = set(st.cut_members)
            for j in range(st.m - 1):
                if j + 1 not in cut:  # a cut scan path merges nothing into member j: its scale stays 1
                    s[j] = weight(st.members[j], st.members[j + 1])
        st.merge_scale = s
        for j, incoming in enumerate(st.incoming):
            for cs, si, ck in incoming:
                if cs == st.id and stacks[cs].slots[si].recurrent:
                    continue  # the scan's own path, scaled by s
                slot = stacks[cs].slots[si]
                if slot.deliver_scale is None:
                    slot.deliver_scale = np.ones(stacks[cs].m)
                slot.deliver_scale[ck] = weight(st.members[j], stacks[cs].members[ck]) / s[j]
