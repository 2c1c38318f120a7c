"""Merge strategies: how the proposals that meet at a node form its target.

A node ``u`` with forward value ``h_u`` receives proposals ``tau_1..tau_m``
(one per credit path). Built-in strategies act on displacements
``tau_i - h_u`` and run inside the engine's fused kernels:

``"linear"``
    ``h_hat = h_u + sum_i (tau_i - h_u)`` — the paper's Eq. 22 (default);
``"mean"``
    ``h_hat = h_u + mean_i (tau_i - h_u)``.

Any function ``f(h, proposals) -> target`` (``h`` is ``[B, n]``,
``proposals`` a list of ``[B, n]`` arrays) can be registered by name with
:func:`register_merge` and named in a graph or node; the engine then calls it
node by node (slower than the fused built-ins, which is the price of
generality). If the function also accepts keyword arguments ``node`` and/or
``sources``, it receives the name of the node being merged and the names of
the consumers that sent each proposal (same order), so that a strategy can
treat credit paths differently (weight a step target against a target from
the future, say). A node with no proposal keeps its forward value as target.
"""

from __future__ import annotations

import inspect
from typing import Callable

import numpy as np

from .errors import GraphError

#: Strategies computed by accumulation inside the engine's kernels.
BUILTIN = ("linear", "mean")

_REGISTRY: dict[str, Callable] = {}


def _linear(h, proposals):
    return h + sum((p - h for p in proposals), np.zeros_like(h))


def _mean(h, proposals):
    if not proposals:
        return h.copy()
    return h + sum((p - h for p in proposals), np.zeros_like(h)) / len(proposals)


def wants_context(fn: Callable) -> tuple[bool, bool]:
    """Whether ``fn`` accepts the keyword arguments ``node`` and ``sources``."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False, False
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True, True
    return "node" in params, "sources" in params


def register_merge(name: str, fn: Callable, overwrite: bool = False) -> None:
    """Register ``fn(h, proposals[, node=..., sources=...]) -> target`` under ``name``.

    Raises :class:`~tpgraph.errors.GraphError` if the name is taken by a
    built-in (or by another function, unless ``overwrite``).
    """
    if not isinstance(name, str) or not name:
        raise GraphError(f"merge name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise GraphError(f"merge {name!r}: expected a callable f(h, proposals) -> target, got {fn!r}")
    if name in BUILTIN or (name in _REGISTRY and not overwrite):
        raise GraphError(f"merge strategy {name!r} is already registered")
    _REGISTRY[name] = fn


def get_merge(name: str) -> Callable:
    """The merge function registered as ``name`` (built-ins included, as references)."""
    check_merge(name, "merge")
    return {"linear": _linear, "mean": _mean}.get(name) or _REGISTRY[name]


def check_merge(name, where: str) -> None:
    """Raise a GraphError naming ``where`` if ``name`` is not a known strategy."""
    if name not in BUILTIN and name not in _REGISTRY:
        known = ", ".join(list(BUILTIN) + sorted(_REGISTRY))
        raise GraphError(f"{where}: unknown merge strategy {name!r}; known: {known}")


def known_merges() -> list[str]:
    """Names of all strategies, built-in first."""
    return list(BUILTIN) + sorted(_REGISTRY)
