"""Drawings of a graph's credit paths, made from its networkx declaration.

:func:`draw_credit_paths` draws a :class:`~tpgraph.graph.Graph` as it is
declared — nothing is hand-placed: every forward edge ``u -> v`` of
``graph.nx`` as a thin grey arrow, every edge whose credit rule carries
credit as a coloured arc back from ``v`` to ``u`` (one colour per rule, read
from the edge's ``rule`` attribute), every learned inverse ``g`` of a dense
node as a dashed arc labelled with its weight group, and nodes by kind
(data, dense, outputs, losses). It returns what it drew, edge by edge, so a
test can hold the drawing to the declaration.

Positions come from :func:`layered_positions` (any DAG: columns by
topological depth) or :func:`step_positions` (unrolled graphs whose nodes
are named ``<role>_<t>``, as :func:`tpgraph.build_srn` names them: one
column per time step, one row per role).

>>> import tpgraph as tp                                                  # doctest: +SKIP
>>> drawn = draw_credit_paths(tp.build_srn(4, 8, 16, 8), "srn.png",       # doctest: +SKIP
...                           pos="steps")
>>> drawn.rules[("h_1", "h_2")]                                           # doctest: +SKIP
'dtp'
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import networkx as nx

from .errors import GraphError, TPGraphError
from .graph import Graph, topological_order
from .rules import get_rule

__all__ = ["CreditDrawing", "draw_credit_paths", "layered_positions", "step_positions", "RULE_COLORS",
           "SRN_ROWS"]

#: Colour of each credit rule's arcs; rules registered later get colours from a spare palette.
RULE_COLORS = {"dtp": "#1f77b4", "tp": "#17becf", "gradient": "#d62728", "fa": "#2ca02c", "none": "#b0b0b0"}
_SPARE_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#ff7f0e", "#7f7f7f")
_INVERSE_COLOR = "#9467bd"

#: Rows of :func:`step_positions` for the SRN, bottom to top: data, hidden, output, loss, labels.
SRN_ROWS = ("x", "h", "y", "E", "l")

# Node kind -> (marker, face colour, legend label).
_KIND_STYLE = {
    "input": ("s", "#d9d9d9", "data (real)"),
    "index_input": ("s", "#f0f0f0", "data (integers: one-hot tokens, labels)"),
    "dense": ("o", "#c6dbef", "dense node"),
    "softmax_output": ("o", "#fdd0a2", "output (logits)"),
    "add": ("D", "#dadaeb", "sum node"),
    "cross_entropy": ("h", "#fc9272", "loss"),
    "mse": ("h", "#fc9272", "loss"),
}
_OTHER_KIND = ("o", "#ffffff", "other node")
_NODE_AREA = 900  # marker area in points^2 (radius ~17 points)
_SHRINK = 17      # arrows stop this many points from a node's centre


@dataclass
class CreditDrawing:
    """What :func:`draw_credit_paths` drew.

    Attributes
    ----------
    path : Path
        The PNG written.
    rules : dict
        ``(u, v) -> rule`` for every edge drawn (forward arrow, and a credit
        arc when the rule carries credit).
    inverses : dict
        ``(v, u) -> weight group`` for every inverse arc drawn (the inverse of
        ``v`` with respect to its input ``u``).
    colors : dict
        ``rule -> colour`` of the rules that appear.
    positions : dict
        ``node -> (x, y)`` used.
    """

    path: Path
    rules: dict = field(default_factory=dict)
    inverses: dict = field(default_factory=dict)
    colors: dict = field(default_factory=dict)
    positions: dict = field(default_factory=dict)

    def describe(self) -> str:
        """A canonical text of the drawing's content (stored in the PNG's ``Description``)."""
        lines = [f"edge {u} -> {v}: {r}" for (u, v), r in sorted(self.rules.items())]
        lines += [f"inverse of {v} w.r.t. {u}: {w}" for (v, u), w in sorted(self.inverses.items())]
        return "\n".join(lines)


def _as_graph(graph) -> Graph:
    if isinstance(graph, Graph):
        return graph
    if isinstance(graph, nx.DiGraph):
        return Graph.from_networkx(graph)
    raise TPGraphError(f"draw_credit_paths needs a tpgraph.Graph or a networkx.DiGraph, got {type(graph).__name__}")


def layered_positions(graph: Graph) -> dict:
    """Positions for any DAG: one column per topological depth, no two nodes on one spot.

    A node's depth is one more than its deepest input's; data nodes (no
    inputs) sit one column before their first consumer, so inputs are drawn
    next to where they are used. Within a column nodes are ordered by the
    mean height of their inputs (one sweep, left to right), which untangles
    chains and branches.
    """
    g = _as_graph(graph).nx
    order, cycle = topological_order(g)
    if cycle is not None:
        raise GraphError(f"graph {graph.name!r} has a cycle: {' -> '.join(map(str, cycle + cycle[:1]))}")
    depth = {}
    for v in order:
        preds = list(g.predecessors(v))
        depth[v] = max((depth[u] + 1 for u in preds), default=0)
    for v in order:  # pull data nodes next to their first consumer
        if g.in_degree(v) == 0 and g.out_degree(v) > 0:
            depth[v] = max(0, min(depth[w] for w in g.successors(v)) - 1)
    columns: dict[int, list] = {}
    for v in order:
        columns.setdefault(depth[v], []).append(v)
    pos: dict = {}
    for d in sorted(columns):
        nodes = columns[d]

        def height(v, placed=pos):
            ys = [placed[u][1] for u in g.predecessors(v) if u in placed]
            ys += [placed[w][1] for w in g.successors(v) if w in placed]
            return sum(ys) / len(ys) if ys else 0.0

        nodes = sorted(nodes, key=lambda v: (height(v), order.index(v)))
        for i, v in enumerate(nodes):
            pos[v] = (float(d), float(i) - (len(nodes) - 1) / 2.0)
    return pos


_STEP_NAME = re.compile(r"^(?P<role>.+)_(?P<t>\d+)$")


def step_positions(graph: Graph, rows: Sequence[str] = SRN_ROWS, spacing: float = 1.6) -> dict:
    """Positions for an unrolled graph whose nodes are named ``<role>_<t>``.

    Node ``role_t`` goes to column ``t`` and to the row of ``role`` in
    ``rows`` (bottom to top). Data and label nodes (``rows[0]`` and
    ``rows[-1]`` when they have no inputs) are shifted a little to the
    left, so their arrows do not hide behind the column's other arrows.

    Raises
    ------
    GraphError
        If a node is not named ``<role>_<t>`` with a role of ``rows``.
    """
    g = _as_graph(graph).nx
    row = {r: i for i, r in enumerate(rows)}
    pos = {}
    for v in g.nodes:
        m = _STEP_NAME.match(str(v))
        if m is None or m.group("role") not in row:
            raise GraphError(f"step_positions: node {v!r} is not named <role>_<t> with a role of {list(rows)}; "
                             "use layered_positions for this graph")
        t, r = int(m.group("t")), row[m.group("role")]
        shift = -0.35 if g.in_degree(v) == 0 and r in (0, len(rows) - 1) else 0.0
        pos[v] = (t * spacing + shift, float(r))
    return pos


def _blocked(pos: Mapping, u, v, margin: float = 0.15) -> bool:
    """Whether a node other than ``u`` and ``v`` lies on the segment from ``u`` to ``v`` (within ``margin``)."""
    (x0, y0), (x1, y1) = pos[u], pos[v]
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    if length2 == 0:
        return False
    for w, (x, y) in pos.items():
        if w == u or w == v:
            continue
        t = ((x - x0) * dx + (y - y0) * dy) / length2
        if 0 < t < 1 and abs((x - x0) * dy - (y - y0) * dx) / length2 ** 0.5 < margin:
            return True
    return False


def _label(name: str) -> str:
    m = re.fullmatch(r"([A-Za-z]+)_([A-Za-z0-9]+)", str(name))
    return f"${m.group(1)}_{{{m.group(2)}}}$" if m else str(name)


def _rule_colors(rules: Sequence[str]) -> dict:
    colors, spare = {}, iter(_SPARE_COLORS)
    for r in rules:
        colors[r] = RULE_COLORS.get(r) or next(spare, "#000000")
    return colors


def draw_credit_paths(graph, path: str | Path, pos: Mapping | str | None = None, title: str | None = None,
                      rows: Sequence[str] = SRN_ROWS) -> CreditDrawing:
    """Draw a graph's forward edges, credit paths, inverses and losses into a PNG.

    Parameters
    ----------
    graph : Graph or networkx.DiGraph
        The declaration (a DiGraph is read with :meth:`Graph.from_networkx`).
    path : str or Path
        The PNG file to write (its folder must exist).
    pos : mapping, "layered", "steps" or None
        ``node -> (x, y)``; ``"steps"`` uses :func:`step_positions` with
        ``rows``; None or ``"layered"`` uses :func:`layered_positions`.
    title : str, optional
        The figure's title (default: the graph's name).
    rows : sequence of str
        The roles of ``pos="steps"``, bottom to top.

    Returns
    -------
    CreditDrawing
        The edges, rules, inverses and colours drawn.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from .train.records import atomic_write_bytes

    graph = _as_graph(graph)
    graph.validate()
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise TPGraphError(f"drawings are written as PNG; give a file name ending in .png, got {str(path)!r}")
    if pos is None or pos == "layered":
        pos = layered_positions(graph)
    elif pos == "steps":
        pos = step_positions(graph, rows)
    elif isinstance(pos, str):
        raise TPGraphError(f"pos must be a mapping, 'layered' or 'steps', got {pos!r}")
    g = graph.nx
    missing = [v for v in g.nodes if v not in pos]
    if missing:
        raise TPGraphError(f"no position for node(s) {missing[:5]}")

    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    width = min(24.0, max(6.0, 1.3 * (max(xs) - min(xs)) + 3.0))
    height = min(16.0, max(4.0, 1.25 * (max(ys) - min(ys)) + 3.2))
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)

    edges = sorted(g.edges(data=True), key=lambda e: (e[2].get("slot", 0), str(e[0]), str(e[1])))
    known = list(RULE_COLORS)
    rule_names = sorted({d["rule"] for _, _, d in edges},
                        key=lambda r: (known.index(r) if r in known else len(known), r))
    colors = _rule_colors(rule_names)
    drawing = CreditDrawing(path=path, colors=colors, positions=dict(pos))

    def arrow(u, v, color, lw, ls="-", rad=0.0, z=1, alpha=1.0):
        ax.annotate("", xy=pos[v], xytext=pos[u], zorder=z,
                    arrowprops=dict(arrowstyle="-|>", color=color, lw=lw, ls=ls, alpha=alpha,
                                    shrinkA=_SHRINK, shrinkB=_SHRINK, mutation_scale=12,
                                    connectionstyle=f"arc3,rad={rad}"))

    for u, v, d in edges:
        rule = d["rule"]
        carries = get_rule(rule).carries_credit
        # a forward edge passing through another node (a skip connection) bends around it
        bend = -0.2 if _blocked(pos, u, v) else 0.0
        arrow(u, v, "0.45", 1.0, ls="-" if carries else ":", rad=bend, z=1)
        if carries:
            arrow(v, u, colors[rule], 2.0, rad=0.35, z=2)
        drawing.rules[(u, v)] = rule

    for v in g.nodes:
        node = g.nodes[v]["node"]
        for u, inv in sorted(getattr(node, "inverses", {}).items()):
            arrow(v, u, _INVERSE_COLOR, 1.3, ls="--", rad=-0.35, z=2)
            (x0, y0), (x1, y1) = pos[v], pos[u]
            # the label sits at the arc's bulge: an arc3 curve of radius rad passes the chord's midpoint
            # moved by rad / 2 times the chord turned a quarter (exact when both axes have the same scale)
            mx, my = (x0 + x1) / 2 - 0.175 * (y1 - y0), (y0 + y1) / 2 + 0.175 * (x1 - x0)
            name = inv.weight if inv.weight is not None else inv.kind  # an analytic inverse has no group
            ax.text(mx, my, _label(name), color=_INVERSE_COLOR, fontsize=9, ha="center", va="center", zorder=4,
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))
            drawing.inverses[(v, u)] = name

    kinds_seen = []
    for v in g.nodes:
        kind = g.nodes[v]["node"].kind
        marker, face, _ = _KIND_STYLE.get(kind, _OTHER_KIND)
        edge = "#a50f15" if g.nodes[v]["node"].is_loss else "0.2"
        ax.scatter([pos[v][0]], [pos[v][1]], s=_NODE_AREA, marker=marker, c=face, edgecolors=edge, linewidths=1.2,
                   zorder=3)
        ax.text(pos[v][0], pos[v][1], _label(v), ha="center", va="center", fontsize=10, zorder=5)
        if kind not in kinds_seen:
            kinds_seen.append(kind)

    handles = [Line2D([], [], color="0.45", lw=1.0, marker=">", markersize=5, label="forward edge u -> v")]
    for r in rule_names:
        if get_rule(r).carries_credit:
            via = " (through the learned inverse)" if get_rule(r).needs_inverse else ""
            handles.append(Line2D([], [], color=colors[r], lw=2.0, label=f"credit, rule {r!r}{via}: v -> u"))
        else:
            handles.append(Line2D([], [], color="0.45", lw=1.0, ls=":", label=f"rule {r!r}: no credit flows"))
    if drawing.inverses:
        handles.append(Line2D([], [], color=_INVERSE_COLOR, lw=1.3, ls="--",
                              label="learned inverse g of v w.r.t. u (weight group)"))
    labelled = set()
    for kind in kinds_seen:
        marker, face, text = _KIND_STYLE.get(kind, _OTHER_KIND)
        if text in labelled:
            continue
        labelled.add(text)
        edge = "#a50f15" if text == "loss" else "0.2"
        handles.append(Line2D([], [], ls="", marker=marker, markersize=11, markerfacecolor=face,
                              markeredgecolor=edge, label=text))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3, fontsize=8,
              frameon=False)
    ax.set_xlim(min(xs) - 0.7, max(xs) + 0.7)
    ax.set_ylim(min(ys) - 0.7, max(ys) + 0.7)
    ax.set_axis_off()
    ax.set_title(title or f"credit paths of {graph.name}")

    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None, "Description": drawing.describe()})
    atomic_write_bytes(path, buf.getvalue())
    return drawing
