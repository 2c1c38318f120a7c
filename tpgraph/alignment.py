"""Alignment of target propagation with backpropagation, on any graph.

After a TP (or FA, or any rule's) step, two angles tell how close its credit
assignment is to the gradient (Meulemans et al. 2020 build their analysis of
DTP on them):

* per parameter group, the angle between the group's local update direction
  (the negated local gradient ``-grads[g]``, what plain SGD would apply) and
  the negated backpropagation gradient ``-dL/dtheta_g`` of the same batch;
* per node, the angle between its displacement ``h_hat - h`` and ``-dL/dh``.

The gradient comes from the graph's own backpropagation special case
(:meth:`tpgraph.graph.Graph.with_rules` ``("gradient")``, the loss targets'
``alpha`` set to 1, the linear merge), run on the same batch with the *same*
parameter arrays, so the comparison is exact and the same for any graph.
Nothing is updated: both passes run with ``apply=False`` and without
training the inverse (no noise is drawn), so measuring does not change a
training run. Angles are in degrees, computed as
``2 atan2(||u - v||, ||u + v||)`` of the unit vectors (accurate near 0,
unlike ``arccos``); NaN where either vector is zero.

Cost: one target pass of the engine (forward, targets, local gradients), one
backpropagation step and the angles: 2-4 training batches of the paper's SRN
(``benchmarks/merge_cost.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from .engine import Engine


def angle(a: np.ndarray, b: np.ndarray) -> float:
    """The angle in degrees between two arrays taken as flat vectors (NaN if either is zero)."""
    a = np.asarray(a, dtype=np.float64).reshape(1, -1)
    b = np.asarray(b, dtype=np.float64).reshape(1, -1)
    return float(angles(a, b)[0])


def angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise angles in degrees between ``a [m, N]`` and ``b [m, N]`` (NaN where a row is zero)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    ok = ((na > 0) & (nb > 0) & np.isfinite(na) & np.isfinite(nb)).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        u, v = a / na, b / nb
        out = np.degrees(2.0 * np.arctan2(np.linalg.norm(u - v, axis=1), np.linalg.norm(u + v, axis=1)))
    out[~ok] = np.nan
    return out


@dataclass
class Alignment:
    """Angles (degrees) of one batch: ``groups[g]`` for parameter groups, ``nodes[n]`` for nodes."""

    groups: dict[str, float] = field(default_factory=dict)
    nodes: dict[str, float] = field(default_factory=dict)
    loss: float = float("nan")

    def nodes_with_prefix(self, prefix: str) -> list[float]:
        """Node angles of ``prefix1, prefix2, ...`` in index order (e.g. ``"h_"``: the SRN's steps)."""
        items = [(int(k[len(prefix):]), v) for k, v in self.nodes.items()
                 if k.startswith(prefix) and k[len(prefix):].isdigit()]
        return [v for _, v in sorted(items)]

    def __repr__(self):
        groups = ", ".join(f"{k}={v:.3g}" for k, v in self.groups.items())
        return f"Alignment(groups: {groups}; {len(self.nodes)} nodes)"


def reference_engine(engine: Engine) -> Engine:
    """The backpropagation special case of ``engine``'s graph, sharing its parameter arrays.

    Every credit edge ``gradient``, every loss's ``alpha`` 1 (so displacements
    are ``-dL/dh`` and local gradients ``dL/dtheta``), the linear merge, the
    same activation codes, and the edges that a joint inverse cut restored
    (:meth:`~tpgraph.graph.Graph.context_cuts`). Its optimisers are never used.
    """
    graph = engine.graph.with_rules("gradient")
    for u, s in graph.context_cuts():  # a joint inverse's cuts replace the merge: the gradient has the edge
        graph.uncut(u, s)
    graph.merge = "linear"
    for n in graph.nodes:
        if n.is_loss:
            n.alpha = None
        if getattr(n, "merge", None) is not None:
            n.merge = None
    return Engine(graph, engine.params, alpha=1.0, seed=engine.seed, fast_tanh=engine.fast_tanh,
                  check_finite=False, blas="auto" if engine.gemm is not None else "numba")


def alignment(engine: Engine, batch: Mapping, reference: Engine | None = None) -> Alignment:
    """Angles between ``engine``'s credit assignment on ``batch`` and the gradient of the same batch.

    Runs ``engine``'s target pass (``apply=False``, no inverse training) and
    the backpropagation pass of ``reference`` (default:
    :func:`reference_engine`, built here; pass one to reuse it) on the same
    batch and parameters. Changes no parameter, optimiser state or random
    generator. ``engine``'s buffers then hold this batch's values and targets
    (read them with :meth:`Engine.displacement` and friends).
    """
    if reference is None:
        reference = reference_engine(engine)
    if reference.params is not engine.params:
        raise ValueError("alignment: the reference engine must share the engine's parameters "
                         "(build it with tpgraph.alignment.reference_engine)")
    ref = reference.step(batch, update_inverse=False, apply=False)
    engine.step(batch, update_inverse=False, apply=False)  # the two engines' buffers are separate
    out = Alignment(loss=ref.loss)
    for g in engine.plan.forward_groups:
        out.groups[g] = angle(engine.grads[g], reference.grads[g]) if g in engine._written else float("nan")
    # node angles one stack at a time (a whole unrolled sequence in one vectorised call)
    for st, b in zip(engine.plan.stacks, engine.buf.stacks):
        if b.d is None:
            continue
        neg_grad = np.empty(b.d.shape, dtype=b.d.dtype)
        for k, name in enumerate(st.members):
            sid, j = reference.plan.where[name]
            neg_grad[k] = reference.buf.stacks[sid].d[j]  # -dL/dh (alpha = 1)
        m = st.m
        out.nodes.update(zip(st.members, angles(b.d.reshape(m, -1), neg_grad.reshape(m, -1)).tolist()))
    return out
