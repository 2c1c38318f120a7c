"""Parameter groups: named arrays shared by any number of nodes, and their initialisers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Iterator

import numpy as np

from .errors import CheckpointError, GraphError


def orthogonal(rng: np.random.Generator, shape: tuple, group: str = "?") -> np.ndarray:
    """A random orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    if len(shape) != 2:
        raise GraphError(f"group {group!r}: orthogonal initialisation needs a 2-D group, got shape {tuple(shape)}")
    a = rng.standard_normal((max(shape), min(shape)))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))
    return q if shape[0] >= shape[1] else q.T


def make_init(spec, group: str) -> Callable[[np.random.Generator, tuple], np.ndarray]:
    """Turn an initialiser spec into ``f(rng, shape) -> array`` (validated now)."""
    if callable(spec):
        def call(rng, shape):
            out = np.asarray(spec(rng, shape))
            if out.shape != tuple(shape):
                raise GraphError(f"initialiser of group {group!r} returned shape {out.shape}, expected {tuple(shape)}")
            return out
        return call
    if isinstance(spec, np.ndarray):
        if not np.issubdtype(spec.dtype, np.number) or np.iscomplexobj(spec) or not np.all(np.isfinite(spec)):
            raise GraphError(f"initial value of group {group!r} must be a finite real array")

        def fixed(rng, shape):
            if spec.shape != tuple(shape):
                raise GraphError(f"initial value of group {group!r} has shape {spec.shape}, expected {tuple(shape)}")
            return spec.copy()
        return fixed
    if not isinstance(spec, str):
        raise GraphError(f"initialiser of group {group!r}: expected a name, an array or a callable, got {spec!r}")
    name, _, arg = spec.partition(":")
    try:
        value = float(arg) if arg else None
    except ValueError:
        raise GraphError(f"initialiser of group {group!r}: {spec!r} has a non-numeric argument") from None
    if value is not None and not (np.isfinite(value) and value > 0):
        raise GraphError(f"initialiser of group {group!r}: {spec!r} needs a finite scale > 0")
    if name == "zeros":
        return lambda rng, shape: np.zeros(shape)
    if name == "orthogonal":
        return lambda rng, shape: orthogonal(rng, shape, group)
    if name == "normal":
        std = 0.1 if value is None else value
        return lambda rng, shape: rng.normal(0.0, std, size=shape)
    if name == "uniform":
        a = 0.1 if value is None else value
        return lambda rng, shape: rng.uniform(-a, a, size=shape)
    if name == "glorot":
        def glorot(rng, shape):
            fan = sum(shape) if len(shape) == 2 else shape[0]
            a = np.sqrt(6.0 / fan)
            return rng.uniform(-a, a, size=shape)
        return glorot
    raise GraphError(
        f"initialiser of group {group!r}: unknown {spec!r}; known: zeros, orthogonal, normal:STD, uniform:A, glorot"
    )


class ParamStore(Mapping):
    """Named parameter arrays, readable and writable by their group names.

    ``store["W_h"]`` is the live array (in the paper's orientation, e.g.
    ``W [out, in]``); writing into it, or assigning ``store["W_h"] = array``,
    changes the model. Assignment checks shape and finiteness and keeps the
    store's dtype, so a model can load weights from elsewhere and compare.
    """

    def __init__(self, values: Mapping[str, np.ndarray], dtype):
        self.dtype = np.dtype(dtype)
        self._values = {k: np.ascontiguousarray(v, dtype=self.dtype) for k, v in values.items()}

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._values[name]
        except KeyError:
            raise KeyError(f"no parameter group {name!r}; groups: {', '.join(sorted(self._values))}") from None

    def __setitem__(self, name: str, value) -> None:
        if name not in self._values:
            raise GraphError(f"no parameter group {name!r}; groups: {', '.join(sorted(self._values))}")
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.number) or np.iscomplexobj(value) or value.dtype == bool:
            raise GraphError(f"parameter group {name!r}: can only assign real numbers, got dtype {value.dtype}")
        old = self._values[name]
        if value.shape != old.shape:
            raise GraphError(f"parameter group {name!r} has shape {old.shape}, cannot assign shape {value.shape}")
        if not np.all(np.isfinite(value)):
            raise GraphError(f"parameter group {name!r}: the assigned array contains NaN or inf")
        old[...] = value  # in place: plans hold references to these arrays

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self):
        groups = ", ".join(f"{k}{tuple(v.shape)}" for k, v in self._values.items())
        return f"ParamStore({groups}; {self.dtype.name})"

    def copy(self) -> "ParamStore":
        """A deep copy (independent arrays)."""
        return ParamStore({k: v.copy() for k, v in self._values.items()}, self.dtype)

    def to_dict(self) -> dict[str, np.ndarray]:
        """Copies of all arrays, e.g. for ``np.savez``."""
        return {k: v.copy() for k, v in self._values.items()}

    def load(self, values: Mapping[str, np.ndarray], source: str = "weights") -> None:
        """Replace every group from ``values``, all or nothing.

        Raises :class:`~tpgraph.errors.CheckpointError` naming the group if a
        group is missing, extra, of another shape, or not finite — before any
        array is changed.
        """
        missing = sorted(set(self._values) - set(values))
        extra = sorted(set(values) - set(self._values))
        if missing or extra:
            raise CheckpointError(f"{source}: parameter groups do not match the model "
                                  f"(missing: {missing or 'none'}; unexpected: {extra or 'none'})")
        for k, v in values.items():
            v = np.asarray(v)
            if v.shape != self._values[k].shape:
                raise CheckpointError(f"{source}: group {k!r} has shape {v.shape}, the model needs {self._values[k].shape}")
            if not np.issubdtype(v.dtype, np.floating) or not np.all(np.isfinite(v)):
                raise CheckpointError(f"{source}: group {k!r} is not a finite floating-point array")
        for k, v in values.items():
            self._values[k][...] = v
