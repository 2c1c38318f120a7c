"""Stability remedies for training: rollback, spectral-radius control, learning-rate warm-up and decay.

Target propagation can learn fast and then *collapse*: within a few hundred
batches the local losses jump by orders of magnitude and the validation loss
falls back to the memoryless baseline (docs/results/table1.md, delay 25).
Four ``protocol.*`` options act against it; each is off by default, and a run
with all four off is the same, bit for bit, as one from before they existed.

Rollback (``protocol.rollback = F``, a factor > 1)
    The trainer keeps in memory a *snapshot* of every parameter group and
    every optimiser state (buffers and step count) at the last **healthy**
    validation point. A validation point is **unhealthy** when

    * its validation loss is not finite, or
    * its validation loss is above ``F`` times the best validation loss so far
      *and* above ``protocol.rollback_floor`` (a collapse back towards the
      baseline; the floor keeps a loss of 1e-5 after a best of 1e-7 healthy), or
    * its reconstruction loss or its local loss (TP) is above ``F`` times the
      median of that quantity over the last ``protocol.rollback_window``
      healthy points where it was finite (at least ``min(3, window)`` of
      them are needed) *and* above ``rollback_floor``, or is not finite after
      having been finite;

    and any other point is healthy (and becomes the snapshot). A training
    batch that raises :class:`~tpgraph.errors.DivergenceError` (a non-finite
    loss or weight) is unhealthy too. On an unhealthy point or batch the
    trainer restores the snapshot, multiplies every learning rate by
    ``protocol.rollback_lr_decay`` and continues with the next batch of the
    data stream: the batches already trained are counted, so the budget does
    not grow. Each rollback is an event in ``summary.json`` (``rollbacks``,
    ``stability.events``) and the metrics rows carry the running count
    (column ``rollbacks``) and the learning-rate factor (``lr_factor``). The
    unhealthy point's row stays in ``metrics.csv`` (it is what happened) but
    does not count for the best values. When ``protocol.max_rollbacks``
    rollbacks are spent, the next unhealthy point stops the run (status
    ``aborted``) with the last healthy state restored, so the final weights
    are finite and healthy.

Spectral-radius control (``protocol.spectral_limit = L``)
    Every ``protocol.spectral_every`` batches, right after the update,
    ``W_h`` (and ``V_h`` where the model has it) is rescaled to spectral
    radius ``L`` when its radius ``rho`` is above it: ``W <- W * L / rho``
    (a matrix below the limit is left untouched, bit for bit). Computing the
    eigenvalues (``np.linalg.eigvals``) of a 128 x 128 matrix costs 7 ms
    on one idle core (6-26 ms on a loaded one), two or more batches' worth;
    so a cheap rigorous upper bound comes first:
    ``rho(W) <= ||W^(2^m)||_F^(1 / 2^m)`` (any consistent norm bounds the
    spectral radius of every power), computed with ``m = 8`` normalised
    squarings: 0.8 ms at 128 units, and within 0.2-0.6% of ``rho`` for the
    trained ``W_h`` and ``V_h`` of a delay-25 copy-memory run (``m = 6``:
    2.3-2.7%; the Frobenius norm's own overestimate shrinks as
    ``n^(1 / 2^(m+1))``). Only a matrix whose bound passes ``L`` has its
    eigenvalues computed, so a limit that is a safety margin costs about
    ``2 x 0.8 / spectral_every`` ms per batch. Between checks the
    radius can pass ``L`` by what ``spectral_every - 1`` updates add. This is
    a remedy, unlike ``protocol.max_spectral_radius``, which aborts.
    The summary reports the checks, the rescalings and the cost per batch.

Learning-rate warm-up (``protocol.lr_warmup = N`` batches)
    After the inverse-only warm-up (TP's ``protocol.warmup``; from the first
    batch for BPTT and fa), the learning rates of the forward and output
    groups ramp linearly: the ``k``-th batch that trains them (``k = 1..N``)
    uses ``lr * k / N``; from batch ``N`` on the full ``lr``. The inverse's
    rate is not ramped. The rates are set through the optimisers' ``lr``
    attributes (:class:`tpgraph.optim.Optimizer`) before each batch of the
    ramp, and a rollback's factor multiplies them.

Learning-rate decay (``protocol.lr_decay = "cosine"`` or ``"linear"``)
    From batch ``S = protocol.lr_decay_start`` (none: the end of the warm-ups,
    ``protocol.warmup + lr_warmup`` for TP, ``lr_warmup`` otherwise) to the
    last batch ``n - 1``, the forward and output rates are multiplied by
    ``d(u)``, ``u = (k - S) / (n - 1 - S)`` for the batch ``k`` (0-based):
    ``f + (1 - f)(1 + cos(pi u)) / 2`` (cosine) or ``1 - (1 - f) u``
    (linear), ``f = protocol.lr_decay_final``; so ``d = 1`` at ``S`` and
    ``d = f`` (in (0, 1]) at the last batch. The inverse's rate is not decayed: as the
    forward weights slow down, the inverse keeps learning at its full rate
    and catches up with them (a TP run that peaks and then declines does so
    while its reconstruction loss grows, docs/results/research.md). The
    factor multiplies the warm-up ramp's and a rollback's.

Checkpoints carry everything of this module that decides the rest of a run
(counters, the current learning rates, the health history, the snapshot's
arrays), so that a run stopped and resumed mid-ramp or after a rollback ends
with the same weights as one never interrupted.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

import numpy as np

__all__ = ["Stability", "StabilityState", "ROW_COLUMNS", "radius_bound", "spectral_radius", "enabled", "decay_factor"]

#: Columns the metrics rows get when a stability option is on.
ROW_COLUMNS: tuple[str, ...] = ("rollbacks", "lr_factor", "spectral_rescales")
#: The quantities whose jumps mark an unhealthy point (columns of the metrics rows).
WATCHED: tuple[str, ...] = ("reconstruction_loss", "local_loss")
#: Squarings of the spectral-radius bound (see the module docstring).
BOUND_SQUARINGS = 8
#: The matrices the spectral control keeps below the limit, where the model has them.
CONTROLLED = ("W_h", "V_h")


def enabled(protocol) -> bool:
    """Whether any stability option of a ``ProtocolConfig`` is on."""
    return (protocol.rollback is not None or protocol.spectral_limit is not None or protocol.lr_warmup > 0
            or protocol.lr_decay != "none")


def decay_factor(kind: str, batch: int, start: int, n_batches: int, final: float) -> float:
    """The learning-rate decay's factor for the 0-based ``batch`` (module docstring).

    Examples
    --------
    >>> [round(decay_factor("cosine", k, 10, 21, 0.0), 3) for k in (0, 10, 15, 20)]
    [1.0, 1.0, 0.5, 0.0]
    >>> decay_factor("linear", 15, 10, 21, 0.5)
    0.75
    """
    if kind == "none" or batch <= start:
        return 1.0
    u = min((batch - start) / max(n_batches - 1 - start, 1), 1.0)
    if kind == "cosine":
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * u))
    if kind == "linear":
        return 1.0 - (1.0 - final) * u
    raise ValueError(f"unknown learning-rate decay {kind!r} (cosine, linear or none)")


def radius_bound(w: np.ndarray, squarings: int = BOUND_SQUARINGS) -> float:
    """An upper bound of the spectral radius: ``||W^(2^m)||_F^(1 / 2^m)`` by ``m`` normalised squarings.

    Exact arithmetic gives ``rho(W) <= bound``; float64 rounding is far below
    the bound's own slack. Returns NaN for a non-finite matrix.

    Examples
    --------
    >>> import numpy as np
    >>> w = np.diag([0.5, -2.0]) + np.triu(np.ones((2, 2)), 1)
    >>> 2.0 <= radius_bound(w) < 2.1
    True
    """
    a = np.array(w, dtype=np.float64)
    log_scale = 0.0  # W^(2^i) = a * exp(log_scale)
    for _ in range(squarings):
        s = float(np.sqrt(np.einsum("ij,ij->", a, a)))
        if not math.isfinite(s):
            return math.nan
        if s == 0.0:
            return 0.0
        a /= s
        log_scale = 2.0 * (log_scale + math.log(s))
        a = a @ a
    s = float(np.sqrt(np.einsum("ij,ij->", a, a)))
    if not math.isfinite(s):
        return math.nan
    if s == 0.0:
        return 0.0
    return math.exp((math.log(s) + log_scale) / 2 ** squarings)


def spectral_radius(w: np.ndarray) -> float:
    """The largest eigenvalue magnitude (float64 eigenvalues)."""
    return float(np.max(np.abs(np.linalg.eigvals(np.asarray(w, dtype=np.float64)))))


@dataclass
class StabilityState:
    """The counters and history of the remedies (JSON-able; saved in checkpoints)."""

    rollbacks: int = 0                  # rollbacks done
    lr_factor: float = 1.0              # rollback_lr_decay ** rollbacks
    snapshot_batch: int | None = None   # the batch of the last healthy validation point
    spectral_checks: int = 0            # batches at which the spectral radii were checked
    spectral_eigvals: int = 0           # matrices whose bound passed the limit (eigenvalues computed)
    spectral_rescales: int = 0          # matrices rescaled
    history: dict = field(default_factory=lambda: {k: [] for k in WATCHED})
    events: list = field(default_factory=list)


class Stability:
    """The remedies of one trainer (see the module docstring); built only when one is on.

    Parameters
    ----------
    protocol : ProtocolConfig
    model : SRN
        Its ``params`` are the live arrays.
    engine : Engine
        Its ``optimizers`` (shared by every length) and ``inverse_groups``.
    warmup : int
        The trainer's inverse-only warm-up (0 for BPTT and fa).
    """

    def __init__(self, protocol, model, engine, warmup: int):
        p = protocol
        self.rollback: float | None = p.rollback
        self.decay = p.rollback_lr_decay
        self.max_rollbacks = p.max_rollbacks
        self.window = p.rollback_window
        self.floor = p.rollback_floor
        self.spectral_limit: float | None = p.spectral_limit
        self.spectral_every = p.spectral_every
        self.lr_warmup = p.lr_warmup
        self.warmup = warmup
        self.lr_decay = p.lr_decay
        self.lr_decay_final = p.lr_decay_final
        self.decay_start = (p.lr_decay_start if p.lr_decay_start is not None else warmup + p.lr_warmup)
        self.n_batches = p.n_batches
        self.params = model.params
        self.optimizers = engine.optimizers
        self.base_lr = {g: opt.lr for g, opt in self.optimizers.items()}
        inverse = set(engine.inverse_groups)
        self.ramped = tuple(g for g in self.optimizers if g not in inverse)
        self.matrices = tuple(n for n in CONTROLLED if n in self.params)
        self.state = StabilityState()
        self.columns = ROW_COLUMNS
        self._snap_params: dict[str, np.ndarray] | None = None
        self._snap_opt: dict[str, dict] | None = None
        self.spectral_s = 0.0  # seconds in the spectral control (this session)
        if self.lr_warmup:
            self.set_lrs(0)

    # ------------------------------------------------------------------ learning rates
    @property
    def scheduled(self) -> bool:
        """Whether the rates change during the run (a warm-up ramp or a decay): set before every batch."""
        return bool(self.lr_warmup) or self.lr_decay != "none"

    def ramp(self, done: int) -> float:
        """The factor of the forward and output rates for the batch after ``done`` batches (warm-up x decay)."""
        k = done - self.warmup  # forward batches done before this one
        r = 1.0
        if self.lr_warmup and k < self.lr_warmup:
            r = (max(k, 0) + 1) / self.lr_warmup
        if self.lr_decay != "none":
            r *= decay_factor(self.lr_decay, done, self.decay_start, self.n_batches, self.lr_decay_final)
        return r

    def set_lrs(self, done: int) -> None:
        """Set every optimiser's rate for the batch after ``done`` batches (base x rollback factor x ramp)."""
        f = self.state.lr_factor
        r = self.ramp(done)
        for g, opt in self.optimizers.items():
            opt.lr = self.base_lr[g] * f * (r if g in self.ramped else 1.0)

    def before_batch(self, done: int) -> None:
        """Called before each batch when ``lr_warmup`` or ``lr_decay`` is on (cheap outside the schedule)."""
        k = done - self.warmup
        if 0 <= k < self.lr_warmup or (self.lr_decay != "none" and done > self.decay_start):
            self.set_lrs(done)

    # ------------------------------------------------------------------ spectral control
    def after_batch(self, done: int) -> None:
        """Called after each update when ``spectral_limit`` is on: the check every ``spectral_every`` batches."""
        if done % self.spectral_every:
            return
        t0 = time.perf_counter()
        self.control()
        self.spectral_s += time.perf_counter() - t0

    def control(self) -> list[str]:
        """Rescale the controlled matrices whose spectral radius is above the limit; returns their names."""
        limit = self.spectral_limit
        st = self.state
        st.spectral_checks += 1
        done = []
        for name in self.matrices:
            w = self.params[name]
            bound = radius_bound(w)
            if not bound > limit:  # below the limit (or not finite: the divergence checks report that)
                continue
            st.spectral_eigvals += 1
            rho = spectral_radius(w)
            if rho > limit:
                w *= w.dtype.type(limit / rho)  # in place: the engines hold these arrays
                st.spectral_rescales += 1
                done.append(name)
        return done

    # ------------------------------------------------------------------ health and rollback
    def problem(self, row: dict, best_val_loss: float | None) -> str | None:
        """Why the validation point ``row`` is unhealthy, or None if it is healthy (module docstring)."""
        v = row["val_loss"]
        if not math.isfinite(v):
            return f"the validation loss is not finite ({v})"
        F, floor = self.rollback, self.floor
        if best_val_loss is not None and v > F * best_val_loss and v > floor:
            return (f"the validation loss {v:.4g} is above {F:g} x the best {best_val_loss:.4g} "
                    f"(and above protocol.rollback_floor = {floor:g})")
        for key in WATCHED:
            x = row.get(key, math.nan)
            hist = self.state.history[key]
            if not math.isfinite(x):
                if hist:  # NaN before it is defined (batch 0, the warm-up); not finite after: unhealthy
                    return f"the {key.replace('_', ' ')} is not finite ({x})"
                continue
            if len(hist) >= min(3, self.window):
                med = float(np.median(hist))
                if x > F * med and x > floor:
                    return (f"the {key.replace('_', ' ')} {x:.4g} is above {F:g} x its median {med:.4g} over the "
                            f"last {len(hist)} healthy points (and above protocol.rollback_floor = {floor:g})")
        return None

    @property
    def has_snapshot(self) -> bool:
        """Whether a healthy state was recorded (from the first validation point on)."""
        return self._snap_params is not None

    def healthy(self, row: dict, batch: int) -> None:
        """Record a healthy validation point: its watched values and the snapshot."""
        st = self.state
        for key in WATCHED:
            x = row.get(key, math.nan)
            if math.isfinite(x):
                hist = st.history[key]
                hist.append(float(x))
                del hist[:-self.window]
        self._snap_params = self.params.to_dict()
        self._snap_opt = {g: opt.state_dict() for g, opt in self.optimizers.items()}
        st.snapshot_batch = int(batch)

    def roll_back(self, batch: int, reason: str, done: int) -> bool:
        """Restore the snapshot; decay the rates (True), or when the rollbacks are spent, stop (False).

        ``batch`` names the unhealthy point or batch, ``done`` the batches done (for the rates' ramp).
        """
        st = self.state
        self.restore_snapshot()
        if st.rollbacks >= self.max_rollbacks:
            st.events.append({"batch": int(batch), "action": "stop", "reason": reason,
                              "restored_batch": st.snapshot_batch, "lr_factor": st.lr_factor})
            return False
        st.rollbacks += 1
        st.lr_factor *= self.decay
        self.set_lrs(done)
        st.events.append({"batch": int(batch), "action": "rollback", "reason": reason,
                          "restored_batch": st.snapshot_batch, "lr_factor": st.lr_factor})
        return True

    def restore_snapshot(self) -> None:
        """Put the snapshot's parameters and optimiser states back (copies: the snapshot stays)."""
        if self._snap_params is None:
            raise RuntimeError("no healthy state to roll back to (the first validation point makes one)")
        self.params.load(self._snap_params, source="the last healthy state")
        for g, st in self._snap_opt.items():
            self.optimizers[g].load_state_dict({k: (v.copy() if isinstance(v, np.ndarray) else v)
                                                for k, v in st.items()})

    def snapshot(self) -> tuple[dict, dict] | None:
        """Copies of the snapshot ``(params, optimiser states)`` (None before the first healthy point)."""
        if self._snap_params is None:
            return None
        return ({k: v.copy() for k, v in self._snap_params.items()},
                {g: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
                 for g, st in self._snap_opt.items()})

    def annotate(self, row: dict) -> None:
        """Add :data:`ROW_COLUMNS` to a metrics row."""
        st = self.state
        row["rollbacks"] = st.rollbacks
        row["lr_factor"] = st.lr_factor
        row["spectral_rescales"] = st.spectral_rescales

    # ------------------------------------------------------------------ records
    def summary(self, batches: int) -> dict:
        """``rollbacks`` and a ``stability`` section for ``summary.json``."""
        st = self.state
        out: dict[str, Any] = {"rollback": self.rollback, "lr_factor": st.lr_factor, "events": list(st.events),
                               "lrs": {g: opt.lr for g, opt in self.optimizers.items()}}
        if self.rollback is not None:
            out.update(rollback_lr_decay=self.decay, max_rollbacks=self.max_rollbacks,
                       snapshot_batch=st.snapshot_batch)
        if self.spectral_limit is not None:
            n = st.spectral_checks
            out["spectral"] = {"limit": self.spectral_limit, "every": self.spectral_every, "checks": n,
                               "eigvals": st.spectral_eigvals, "rescales": st.spectral_rescales,
                               "ms_per_batch_this_session": (1e3 * self.spectral_s / (n * self.spectral_every)
                                                             if n else None)}
        if self.lr_warmup:
            out["lr_warmup"] = self.lr_warmup
        if self.lr_decay != "none":
            out["lr_decay"] = {"kind": self.lr_decay, "start": self.decay_start, "final": self.lr_decay_final}
        return {"rollbacks": st.rollbacks, "stability": out}

    # ------------------------------------------------------------------ checkpoints
    def save(self, arrays: dict, scalars: dict, rows: list) -> None:
        """Add this state to a checkpoint payload (arrays under ``stability/``, scalars as ``stability``)."""
        table = np.array([[float(r.get(c, math.nan)) for c in self.columns] for r in rows], dtype=np.float64)
        arrays["stability/rows"] = table.reshape(len(rows), len(self.columns))
        snap_steps = None
        if self._snap_params is not None:
            arrays.update({f"stability/param/{k}": v for k, v in self._snap_params.items()})
            snap_steps = {}
            for g, st in self._snap_opt.items():
                snap_steps[g] = int(st["t"])
                arrays.update({f"stability/opt/{g}/{k}": v for k, v in st.items() if k != "t"})
        scalars["stability"] = {"state": asdict(self.state), "columns": list(self.columns),
                                "lrs": {g: opt.lr for g, opt in self.optimizers.items()},
                                "snapshot_optimizer_steps": snap_steps}

    def prepare_restore(self, scalars: dict, arrays: dict, fail: Callable[[str], Exception]) -> Callable:
        """Validate this state in a checkpoint; returns ``apply(rows)``, which restores it (nothing changes before)."""
        doc = scalars.get("stability")
        if not isinstance(doc, dict):
            raise fail("the stability state (protocol.rollback, spectral_limit, lr_warmup, lr_decay) is missing")
        if doc.get("columns") != list(self.columns):
            raise fail(f"stability columns {doc.get('columns')} differ from this version's {list(self.columns)}")
        known = {f.name for f in fields(StabilityState)}
        raw = doc.get("state")
        if not isinstance(raw, dict) or set(raw) != known:
            raise fail("the stability state has other fields than this version's")
        state = StabilityState(**raw)
        if not isinstance(state.history, dict) or set(state.history) != set(WATCHED):
            raise fail("the stability history is malformed")
        lrs = doc.get("lrs")
        if not isinstance(lrs, dict) or set(lrs) != set(self.optimizers):
            raise fail(f"the learning rates cover {sorted(lrs or ())}, the model's groups are "
                       f"{sorted(self.optimizers)}")
        for g, v in lrs.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise fail(f"the learning rate of {g!r} is {v!r}, not a finite number > 0")
        table = arrays.get("stability/rows")
        if table is None or table.ndim != 2 or table.shape[1] != len(self.columns):
            raise fail("the stability columns of the metrics are missing or malformed")
        snap_params = {k[len("stability/param/"):]: v for k, v in arrays.items() if k.startswith("stability/param/")}
        steps = doc.get("snapshot_optimizer_steps")
        snap_opt = None
        if steps is None:
            if snap_params:
                raise fail("the snapshot's optimiser states are missing")
            snap_params = None
        else:
            if set(snap_params) != set(self.params):
                raise fail("the snapshot's parameters do not cover the model's groups")
            for k, v in snap_params.items():
                if v.shape != self.params[k].shape or v.dtype != self.params[k].dtype:
                    raise fail(f"the snapshot's {k!r} is {v.dtype} {v.shape}, the model's "
                               f"{self.params[k].dtype} {self.params[k].shape}")
            if not isinstance(steps, dict) or set(steps) != set(self.optimizers):
                raise fail("the snapshot's optimiser steps do not cover the model's groups")
            snap_opt = {}
            for g in self.optimizers:
                st = {"t": steps[g]}
                st.update({k.split("/", 3)[3]: v for k, v in arrays.items() if k.startswith(f"stability/opt/{g}/")})
                copy.copy(self.optimizers[g]).load_state_dict(dict(st))  # validated on a throw-away copy
                snap_opt[g] = st
        metrics = arrays.get("metrics")
        if metrics is not None and metrics.shape[0] != table.shape[0]:
            raise fail(f"the stability columns have {table.shape[0]} rows, the metrics {metrics.shape[0]}")

        def apply(rows: list) -> None:
            self.state = state
            for g, v in lrs.items():
                self.optimizers[g].lr = float(v)
            self._snap_params = {k: v.copy() for k, v in snap_params.items()} if snap_params is not None else None
            self._snap_opt = snap_opt
            for r, values in zip(rows, table.tolist()):
                for c, v in zip(self.columns, values):
                    r[c] = int(v) if c in ("rollbacks", "spectral_rescales") and math.isfinite(v) else v

        return apply
