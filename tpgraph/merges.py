"""Merge strategies: how the proposals that meet at a node form its target.

A node ``u`` with forward value ``h_u`` receives proposals ``tau_1..tau_m``
(one per credit path). Merging is accumulation: every path adds its
displacement ``tau_i - h_u`` into the node's displacement buffer. Strategies:

``"linear"``
    ``h_hat = h_u + sum_i (tau_i - h_u)`` — the paper's Eq. 22 (default);
``"mean"``
    ``h_hat = h_u + mean_i (tau_i - h_u)``;
``"weighted_step"``
    a :class:`Weighted` strategy: ``h_hat = h_u + sum_i w_i (tau_i - h_u)``
    with the weight ``1/(t+1)`` on the step target of the SRN's ``h_t`` (the
    proposal from ``y_t``) and 1 on every other path — the authors' earlier
    code's weighting;
``"clipped"``
    ``h_hat = h_u + clip(sum_i (tau_i - h_u))``: the summed displacement of
    each sample scaled down to Euclidean norm at most ``max_norm`` = 1 (a
    :class:`JitMerge` of :func:`clip_sum`; register other thresholds with
    ``register_merge("clipped_0.3", clip_sum, jit=True, params=[0.3])``, or
    take :func:`clipped_merge` ``(0.3)``, which runs configurations use for
    ``method.clip``).

All of these run inside the engine's compiled kernels (a chain's scan
included), with no per-node Python call. Your own strategies come in three
forms, registered by name with :func:`register_merge`:

* ``Weighted(weight)``: ``weight(node, source) -> float > 0`` per credit
  path, evaluated once when the graph is compiled; fused like ``linear``;
* a function ``fn(h, d, p, k, params)`` with ``jit=True``: compiled with
  Numba and called inside the scan. ``h`` is member ``k``'s forward value
  ``[B, n]``, ``d`` the displacement accumulated from its consumers other
  than the chain's next member, ``p`` the proposal (a displacement) of the
  chain's next member (zeros outside a chain and at its last member),
  ``params`` a float64 array given at registration; it writes the merged
  displacement into ``d``;
* any Python function ``f(h, proposals) -> target`` (``h`` is ``[B, n]``,
  ``proposals`` a list of ``[B, n]`` targets). The engine calls it node by
  node, between the kernel calls of a scan (slower, the price of
  generality). If it also accepts keyword arguments ``node`` and/or
  ``sources``, it receives the name of the node being merged and the names
  of the consumers that sent each proposal (same order).

A node with no proposal keeps its forward value as target.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import GraphError

#: Strategies the engine computes by accumulation with a per-member scale inside its kernels.
BUILTIN = ("linear", "mean")
#: Names no registration may take (the built-ins, including those registered below).
PROTECTED = BUILTIN + ("weighted_step", "clipped")

_REGISTRY: dict[str, object] = {}


def _linear(h, proposals):
    return h + sum((p - h for p in proposals), np.zeros_like(h))


def _mean(h, proposals):
    if not proposals:
        return h.copy()
    return h + sum((p - h for p in proposals), np.zeros_like(h)) / len(proposals)


class Weighted:
    """``h_hat = h + sum_i w(node, source_i) (tau_i - h)``, weights fixed per credit path.

    ``weight(node, source)`` names the node being merged and the consumer
    that sent the proposal and returns a finite weight > 0. It is evaluated
    once per compiled graph (not per batch), so the strategy runs fused: each
    path's displacement is scaled as it is delivered, and a chain's scan
    scales the proposal of its next member.
    """

    def __init__(self, weight: Callable[[str, str], float], name: str = ""):
        if not callable(weight):
            raise GraphError(f"Weighted: expected a callable weight(node, source) -> float, got {weight!r}")
        self.weight = weight
        self.name = name or getattr(weight, "__name__", "weight")

    def __call__(self, node: str, source: str) -> float:
        w = self.weight(node, source)
        if not (isinstance(w, (int, float, np.floating, np.integer)) and np.isfinite(w) and w > 0):
            raise GraphError(f"merge weight {self.name}: the weight of the proposal from {source!r} to {node!r} "
                             f"must be a finite number > 0, got {w!r} (leave a path out with rule 'none')")
        return float(w)

    def reference(self, h, proposals, node, sources):
        """Plain NumPy: the target from the proposals (targets) and their sources."""
        return h + sum((self(node, s) * (p - h) for p, s in zip(proposals, sources)), np.zeros_like(h))

    def __repr__(self):
        return f"Weighted({self.name})"


def srn_step_weight(node: str, source: str) -> float:
    """``1/(t+1)`` for the step target of ``h_t`` (from ``y_t``), 1 for every other path."""
    head, _, t = node.rpartition("_")
    if head == "h" and t.isdigit() and source.startswith("y_"):
        return 1.0 / (int(t) + 1)
    return 1.0


@dataclass
class JitMerge:
    """A merge compiled with Numba: ``fn(h, d, p, k, params)`` writes the merged displacement into ``d``."""

    name: str
    fn: object  # the Numba dispatcher
    py: Callable  # the Python function it compiles (reference, readable)
    params: np.ndarray

    def __repr__(self):
        return f"JitMerge({self.name!r}, params={self.params.tolist()})"


def clip_sum(h, d, p, k, params):
    """``d = clip(d + p)``: each row scaled down to Euclidean norm at most ``params[0]``."""
    max_norm = params[0]
    rows, cols = d.shape
    for r in range(rows):
        s = 0.0
        for j in range(cols):
            v = d[r, j] + p[r, j]
            d[r, j] = v
            s += v * v
        norm = np.sqrt(s)
        if norm > max_norm:
            scale = max_norm / norm
            for j in range(cols):
                d[r, j] *= scale


def wants_context(fn: Callable) -> tuple[bool, bool]:
    """Whether ``fn`` accepts the keyword arguments ``node`` and ``sources``."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False, False
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True, True
    return "node" in params, "sources" in params


def register_merge(name: str, fn, overwrite: bool = False, *, jit: bool = False, params=()) -> None:
    """Register a merge strategy under ``name``.

    ``fn`` is a :class:`Weighted`, or a function: ``f(h, proposals[, node=...,
    sources=...]) -> target`` (called node by node), or with ``jit=True``
    ``f(h, d, p, k, params)`` writing the merged displacement into ``d``,
    compiled here with Numba (``params``: its float parameters) and run
    inside the kernels. Raises :class:`~tpgraph.errors.GraphError` if the
    name is taken by a built-in (or by another strategy, unless ``overwrite``),
    or if Numba cannot compile ``fn``.
    """
    if not isinstance(name, str) or not name:
        raise GraphError(f"merge name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise GraphError(f"merge {name!r}: expected a callable f(h, proposals) -> target, got {fn!r}")
    if name in BUILTIN or (name in _REGISTRY and (not overwrite or name in PROTECTED)):
        raise GraphError(f"merge strategy {name!r} is already registered"
                         + (" (a built-in)" if name in PROTECTED else ""))
    if jit:
        if isinstance(fn, Weighted):
            raise GraphError(f"merge {name!r}: a Weighted strategy is fused already; register it without jit=True")
        _REGISTRY[name] = _compile(name, fn, params)
        return
    if params not in ((), None) and len(params):
        raise GraphError(f"merge {name!r}: params are for jit=True merges only")
    _REGISTRY[name] = fn


def _compile(name, fn, params) -> JitMerge:
    from numba import njit

    try:
        p = np.asarray(params, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise GraphError(f"merge {name!r}: params must be numbers, got {params!r}") from None
    py = getattr(fn, "py_func", fn)
    try:
        dispatcher = njit(error_model="numpy", cache=True)(py)
    except RuntimeError:  # defined where Numba cannot keep a cache (a REPL, exec): compile only
        dispatcher = njit(error_model="numpy")(py)
    # compile now for both float types, so that a bad function fails here, naming the merge
    for dt in (np.float32, np.float64):
        h = np.zeros((2, 3), dtype=dt)
        try:
            dispatcher(h, h.copy(), h.copy(), 0, p)
        except Exception as exc:
            raise GraphError(f"merge {name!r}: Numba cannot compile fn(h, d, p, k, params) for {dt.__name__} "
                             f"arrays: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    return JitMerge(name, dispatcher, py, p)


def clipped_merge(max_norm: float) -> str:
    """The name of the ``"clipped"`` merge with threshold ``max_norm``, registered on first use.

    ``"clipped"`` itself for 1; else ``"clipped(max_norm=...)"``, a
    :class:`JitMerge` that shares the compiled :func:`clip_sum` of
    ``"clipped"`` with its own ``params`` (so a new threshold compiles
    nothing). This is what ``method.clip`` of a run configuration uses.

    Examples
    --------
    >>> clipped_merge(1.0), clipped_merge(0.25)
    ('clipped', 'clipped(max_norm=0.25)')
    >>> get_merge(clipped_merge(0.25)).params.tolist()
    [0.25]
    """
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float, np.floating, np.integer)) \
            or not (np.isfinite(max_norm) and max_norm > 0):
        raise GraphError(f"clipped merge: max_norm must be a finite number > 0, got {max_norm!r}")
    v = float(max_norm)
    if v == 1.0:
        return "clipped"
    name = f"clipped(max_norm={v!r})"
    if name not in _REGISTRY:
        base = _REGISTRY["clipped"]
        _REGISTRY[name] = JitMerge(name, base.fn, base.py, np.array([v], dtype=np.float64))
    return name


def get_merge(name: str):
    """The strategy registered as ``name``: a function, a :class:`Weighted` or a :class:`JitMerge`."""
    check_merge(name, "merge")
    return {"linear": _linear, "mean": _mean}.get(name) or _REGISTRY[name]


def merge_kind(name: str) -> str:
    """How the engine runs ``name``: ``"linear"``, ``"mean"``, ``"weighted"``, ``"jit"`` or ``"python"``."""
    if name in BUILTIN:
        return name
    m = get_merge(name)
    if isinstance(m, Weighted):
        return "weighted"
    if isinstance(m, JitMerge):
        return "jit"
    return "python"


def check_merge(name, where: str) -> None:
    """Raise a GraphError naming ``where`` if ``name`` is not a known strategy."""
    if name not in BUILTIN and name not in _REGISTRY:
        known = ", ".join(list(BUILTIN) + sorted(_REGISTRY))
        raise GraphError(f"{where}: unknown merge strategy {name!r}; known: {known}")


def known_merges() -> list[str]:
    """Names of all strategies, built-in first."""
    return list(BUILTIN) + sorted(_REGISTRY)


register_merge("weighted_step", Weighted(srn_step_weight, "1/(t+1) on the step target"))
register_merge("clipped", clip_sum, jit=True, params=[1.0])
