"""Find collapses in a run folder's ``metrics.csv`` and say what jumped before them.

A **collapse** is a validation point whose loss is back near the reference
(the task's memoryless baseline, or the first validation loss when the task
has none): at least ``back`` times the reference, after an earlier point was
far below it (at most ``far`` times the reference). The run must recover
below ``far`` times the reference before a second collapse is counted.

For each collapse the reading gives the last good point before it, the best
value until then, and for each of the reconstruction loss, the local loss
and the spectral radii of ``W_h`` and ``V_h`` its value at the collapse (and
at the point before) against its median over the ``window`` points before
that: a ratio of 10 or more is a *jump*, a change of the radius by 5% or
more a *rise*. Rollbacks (the ``rollbacks`` column of a run with
``protocol.rollback``) are counted too.

Examples
--------
``python -m tpgraph.train.diagnose runs/copy_memory-tp-20261201-120000``
prints the reading of one or more run folders; :func:`diagnose` returns it
as a :class:`Diagnosis` (``.collapses``, ``.text``).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TPGraphError
from .records import RunFiles, read_metrics_csv, read_summary

__all__ = ["Collapse", "Diagnosis", "diagnose", "find_collapses"]

#: Quantities whose jumps are looked for before a collapse (metrics columns).
LOSSES = ("reconstruction_loss", "local_loss")
RADII = ("spectral_radius_W_h", "spectral_radius_V_h")
JUMP = 10.0    # a loss this many times its recent median is a jump
RISE = 1.05    # a radius this many times its recent median is a rise


@dataclass
class Collapse:
    """One collapse: where, from what, and the ratios of the watched quantities to their recent medians."""

    batch: int                     # the first validation point back near the reference
    val_loss: float
    previous_batch: int            # the point before it
    previous_val_loss: float
    best_val_loss: float           # the lowest validation loss before the collapse
    best_batch: int
    ratios: dict = field(default_factory=dict)      # quantity -> value at the collapse / median before
    ratios_before: dict = field(default_factory=dict)  # the same at the point before the collapse
    recovered_batch: int | None = None  # the first point far below the reference again (None: never)
    rolled_back: bool = False      # protocol.rollback restored the last healthy state at this point

    def jumped(self) -> list[str]:
        """The quantities that jumped (losses x10) or rose (radii x1.05) at the collapse or the point before."""
        out = []
        for q in LOSSES + RADII:
            limit = JUMP if q in LOSSES else RISE
            r = max((v for v in (self.ratios.get(q, math.nan), self.ratios_before.get(q, math.nan))
                     if math.isfinite(v)), default=math.nan)
            if math.isfinite(r) and r >= limit:
                out.append(q)
        return out


@dataclass
class Diagnosis:
    """The reading of one run folder."""

    run: str
    reference: float
    reference_name: str
    collapses: list
    rollbacks: int | None
    final_val_loss: float
    best_val_loss: float
    text: str = ""


def _median_before(col: np.ndarray, i: int, window: int) -> float:
    prev = col[max(0, i - window):i]
    prev = prev[np.isfinite(prev)]
    return float(np.median(prev)) if prev.size else math.nan


def _ratio(col: np.ndarray, i: int, window: int) -> float:
    med = _median_before(col, i, window)
    v = float(col[i])
    if not (math.isfinite(med) and math.isfinite(v)) or med <= 0:
        return math.nan
    return v / med


def find_collapses(metrics: dict, reference: float, *, far: float = 0.01, back: float = 0.25,
                   window: int = 5) -> list[Collapse]:
    """The collapses in a metrics table (columns as :func:`~tpgraph.train.records.read_metrics_csv` returns)."""
    batch = metrics["batch"]
    val = metrics["val_loss"]
    out: list[Collapse] = []
    below = False      # has the run been far below the reference since the last collapse?
    best, best_i = math.inf, -1
    for i in range(len(val)):
        v = float(val[i])
        if below and (not math.isfinite(v) or v >= back * reference) and i > 0:
            j = i - 1  # the window ends before the point preceding the collapse, so that its jump shows
            c = Collapse(batch=int(batch[i]), val_loss=v, previous_batch=int(batch[j]),
                         previous_val_loss=float(val[j]), best_val_loss=best, best_batch=int(batch[best_i]))
            for q in LOSSES + RADII:
                if q in metrics:
                    col = metrics[q]
                    med = _median_before(col, j, window)
                    c.ratios[q] = (float(col[i]) / med if math.isfinite(med) and med > 0 else math.nan)
                    c.ratios_before[q] = _ratio(col, j, window)
            rb = metrics.get("rollbacks")
            c.rolled_back = bool(rb is not None and rb[i] > rb[j])
            out.append(c)
            below = False
            continue
        if math.isfinite(v) and v < best:
            best, best_i = v, i
        if math.isfinite(v) and v <= far * reference:
            if not below and out and out[-1].recovered_batch is None:
                out[-1].recovered_batch = int(batch[i])
            below = True
    return out


def _fmt_ratio(q: str, c: Collapse) -> str:
    r, rb = c.ratios.get(q, math.nan), c.ratios_before.get(q, math.nan)
    if not (math.isfinite(r) or math.isfinite(rb)):
        return ""
    name = {"reconstruction_loss": "reconstruction loss", "local_loss": "local loss",
            "spectral_radius_W_h": "rho(W_h)", "spectral_radius_V_h": "rho(V_h)"}[q]
    return f"{name} x{r:.3g} (x{rb:.3g} at the point before)"


def diagnose(run_dir: str | Path, *, far: float = 0.01, back: float = 0.25, window: int = 5) -> Diagnosis:
    """Read a run folder's ``metrics.csv`` (and ``summary.json`` for the baseline) and find its collapses.

    Raises
    ------
    TPGraphError
        If the folder has no metrics table.
    """
    files = RunFiles(run_dir)
    metrics = read_metrics_csv(files.metrics)
    try:
        summary = read_summary(files.summary) if files.summary.exists() else {}
    except TPGraphError:
        summary = {}
    val = metrics["val_loss"]
    if not len(val):
        raise TPGraphError(f"{str(files.metrics)!r} has no validation points")
    baseline = summary.get("baseline_loss")
    if isinstance(baseline, (int, float)) and math.isfinite(baseline) and baseline > 0:
        reference, ref_name = float(baseline), "the memoryless baseline"
    else:
        reference, ref_name = float(val[0]), "the first validation loss"
    collapses = find_collapses(metrics, reference, far=far, back=back, window=window)
    rb = metrics.get("rollbacks")
    rollbacks = int(np.nanmax(rb)) if rb is not None and np.isfinite(rb).any() else summary.get("rollbacks")
    finite = val[np.isfinite(val)]
    d = Diagnosis(run=str(files.root), reference=reference, reference_name=ref_name, collapses=collapses,
                  rollbacks=rollbacks, final_val_loss=float(val[-1]),
                  best_val_loss=float(finite.min()) if finite.size else math.nan)
    d.text = _reading(d, metrics, far, back)
    return d


def _reading(d: Diagnosis, metrics: dict, far: float, back: float) -> str:
    lines = [f"{d.run}: best validation loss {d.best_val_loss:.3g}, final {d.final_val_loss:.3g} "
             f"({d.reference_name} {d.reference:.4g})."]
    if not d.collapses:
        lines.append(f"No collapse (no point back above {back:g} x the reference after one below {far:g} x).")
    for c in d.collapses:
        lines.append(f"Collapse at batch {c.batch}: validation loss {c.val_loss:.3g} "
                     f"({c.val_loss / d.reference:.2g} x the reference), from {c.previous_val_loss:.3g} at batch "
                     f"{c.previous_batch}; best before it {c.best_val_loss:.3g} at batch {c.best_batch}.")
        parts = [t for t in (_fmt_ratio(q, c) for q in LOSSES + RADII) if t]
        if parts:
            lines.append("  Against the median of the points before: " + "; ".join(parts) + ".")
        jumped = c.jumped()
        names = {"reconstruction_loss": "the reconstruction loss", "local_loss": "the local loss",
                 "spectral_radius_W_h": "rho(W_h)", "spectral_radius_V_h": "rho(V_h)"}
        if jumped:
            lines.append("  Jumped at the collapse point or the one before: "
                         + ", ".join(names[q] for q in jumped) + ".")
        else:
            lines.append("  Nothing watched jumped before it.")
        if c.rolled_back:
            lines.append("  Rolled back there (protocol.rollback) to the last healthy state.")
        lines.append(f"  Recovered below {far:g} x the reference at batch {c.recovered_batch}."
                     if c.recovered_batch is not None else "  Never recovered.")
    if d.rollbacks is not None:
        lines.append(f"Rollbacks: {d.rollbacks}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tpgraph.train.diagnose", description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders")
    ap.add_argument("--far", type=float, default=0.01, help="'far below': at most this x the reference (0.01)")
    ap.add_argument("--back", type=float, default=0.25, help="'back': at least this x the reference (0.25)")
    ap.add_argument("--window", type=int, default=5, help="points of the median before a collapse (5)")
    args = ap.parse_args(argv)
    status = 0
    for run in args.runs:
        try:
            print(diagnose(run, far=args.far, back=args.back, window=args.window).text)
        except TPGraphError as exc:
            print(f"{run}: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
