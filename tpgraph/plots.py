"""Plots of recorded runs (matplotlib, Agg backend, PNG files).

Like the paper's figures:

* :func:`plot_loss` — training and validation loss of each run over the
  training batches, against the task's memoryless baseline (Fig. 2);
* :func:`plot_spectral_radius` — the spectral radius of ``W_h`` (and, for TP,
  of the inverse's ``V_h``) over training (Fig. 3);
* :func:`plot_overview` — both, plus the whole-sequence accuracy, side by side;
* :func:`plot_run` — the first two into a run folder (called at the end of a run).
* :func:`plot_alignment` — the angles between a run's updates (and hidden
  displacements, per time step) and BPTT's gradient, from ``alignment.csv``.

Runs are read back from their folders (``metrics.csv``, ``summary.json``), so
plots can be redrawn at any time: ``tpgraph plot runs/A runs/B -o ab.png``.
The figures are drawn without ``pyplot`` (no global state, no display needed).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import TPGraphError
from .train.records import RunFiles, read_metrics_csv, read_summary

__all__ = ["RunData", "load_run", "plot_loss", "plot_spectral_radius", "plot_overview", "plot_run",
           "plot_alignment"]

_COLORS = {"tp": "#1f77b4", "bptt": "#d62728"}
_OTHER_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#ff7f0e")


@dataclass
class RunData:
    """What the plots need of a run."""

    name: str
    method: str
    metrics: dict
    baseline: float | None = None
    task: dict = field(default_factory=dict)
    label: str = ""
    warmup: int = 0


def load_run(run_dir: str | Path, summary: dict | None = None) -> RunData:
    """Read a run folder's metrics and summary (or use the ``summary`` given)."""
    files = RunFiles(run_dir)
    if not files.root.is_dir():
        raise TPGraphError(f"run folder {str(files.root)!r} not found")
    metrics = read_metrics_csv(files.metrics)
    if summary is None:
        summary = read_summary(files.summary) if files.summary.exists() else {}
    method = summary.get("method") or "?"
    return RunData(name=files.root.name, method=method, metrics=metrics, baseline=summary.get("baseline_loss"),
                   task=summary.get("task") or {}, label=method.upper() if method != "?" else files.root.name,
                   warmup=int(summary.get("warmup") or 0))


def _labels(runs: Sequence[RunData]) -> list[tuple[str, str]]:
    """A label and a colour per run; the folder name is added when labels would repeat."""
    labels = [r.label for r in runs]
    out = []
    spare = iter(_OTHER_COLORS)
    used = set()
    for r, lab in zip(runs, labels):
        if labels.count(lab) > 1:
            lab = f"{lab} ({r.name})"
        color = _COLORS.get(r.method)
        if color is None or color in used:
            color = next(spare, None) or "#000000"
        used.add(color)
        out.append((lab, color))
    return out


def _task_title(runs: Sequence[RunData]) -> str:
    tasks = {json.dumps(r.task, sort_keys=True) for r in runs if r.task}  # values may be lists (positions)
    if len(tasks) != 1:
        return ""
    task = json.loads(next(iter(tasks)))
    name = str(task.pop("name", "")).replace("_", " ")
    if "delay" in task:
        return f"{name}, delay T = {task['delay']}"
    if "length" in task:
        return f"{name}, length T = {task['length']}"
    return name


def _positive(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(y) & (y > 0)
    return x[ok], y[ok]


def _shade_warmup(ax, runs: Sequence[RunData]) -> None:
    """Shade TP's inverse-only warm-up (when all TP runs share it)."""
    warm = {r.warmup for r in runs if r.method == "tp" and r.warmup > 0}
    if len(warm) == 1:
        ax.axvspan(0, warm.pop(), color="0.85", alpha=0.5, lw=0, label="TP warm-up (inverse only)")


def _loss_label(runs: Sequence[RunData]) -> str:
    """What the loss axis measures: the cross-entropy, or the squared error of a regression task."""
    from .tasks import TASKS

    kinds = set()
    for r in runs:
        cls = TASKS.get(r.task.get("name"))
        kinds.add((cls.output_kind, cls.many_to_one) if cls is not None else ("class", False))
    if kinds == {("regression", True)}:
        return "mean squared error at the last step"
    if kinds == {("class", True)}:
        return "cross-entropy at the last step"
    return "cross-entropy per time step"


def _draw_loss(ax, runs: Sequence[RunData], baseline: float | None) -> None:
    _shade_warmup(ax, runs)
    for r, (label, color) in zip(runs, _labels(runs)):
        m = r.metrics
        x, y = _positive(m["batch"], m["train_loss"])
        ax.plot(x, y, color=color, lw=1.0, alpha=0.45, ls="--", label=f"{label} training")
        x, y = _positive(m["batch"], m["val_loss"])
        ax.plot(x, y, color=color, lw=1.8, label=f"{label} validation")
    if baseline is not None:
        ax.axhline(baseline, color="0.3", lw=1.2, ls=":", label=f"memoryless baseline ({baseline:.4f})")
    ax.set_yscale("log")
    ax.set_xlabel("training batches")
    ax.set_ylabel(_loss_label(runs))
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="best", fontsize=8)


def _draw_spectral(ax, runs: Sequence[RunData]) -> None:
    for r, (label, color) in zip(runs, _labels(runs)):
        m = r.metrics
        ax.plot(m["batch"], m["spectral_radius_W_h"], color=color, lw=1.8, label=f"{label}: W_h")
        if r.method == "tp" and "spectral_radius_V_h" in m:
            ax.plot(m["batch"], m["spectral_radius_V_h"], color=color, lw=1.2, ls=":", label=f"{label}: V_h (inverse)")
    ax.set_xlabel("training batches")
    ax.set_ylabel("spectral radius")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)


def _draw_accuracy(ax, runs: Sequence[RunData]) -> None:
    for r, (label, color) in zip(runs, _labels(runs)):
        m = r.metrics
        ax.plot(m["batch"], 100 * m["seq_acc"], color=color, lw=1.8, label=f"{label}: whole sequence")
        ax.plot(m["batch"], 100 * m["step_acc"], color=color, lw=1.0, ls="--", alpha=0.6, label=f"{label}: per step")
    ax.set_ylim(-2, 102)
    ax.set_xlabel("training batches")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)


def _figure(ncols: int, width: float = 6.4, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig, path: str | Path) -> Path:
    from .train.records import atomic_write_bytes
    import io

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise TPGraphError(f"plots are written as PNG; give a file name ending in .png, got {str(path)!r}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _runs(runs: Iterable[RunData | str | Path]) -> list[RunData]:
    out = [r if isinstance(r, RunData) else load_run(r) for r in runs]
    if not out:
        raise TPGraphError("no runs to plot")
    return out


def _baseline(runs: Sequence[RunData]) -> float | None:
    values = {round(r.baseline, 12) for r in runs if r.baseline is not None and math.isfinite(r.baseline)}
    return next(iter(values)) if len(values) == 1 else None


def plot_loss(runs: Iterable[RunData | str | Path], path: str | Path, title: str | None = None) -> Path:
    """Training and validation loss against the memoryless baseline (like the paper's Fig. 2)."""
    runs = _runs(runs)
    fig, (ax,) = _figure(1)
    _draw_loss(ax, runs, _baseline(runs))
    ax.set_title(title or " ".join(filter(None, ["Loss", _task_title(runs) and f"({_task_title(runs)})"])))
    return _save(fig, path)


def plot_spectral_radius(runs: Iterable[RunData | str | Path], path: str | Path, title: str | None = None) -> Path:
    """The spectral radius of ``W_h`` (and ``V_h`` for TP) over training (like the paper's Fig. 3)."""
    runs = _runs(runs)
    fig, (ax,) = _figure(1)
    _draw_spectral(ax, runs)
    ax.set_title(title or " ".join(filter(None, ["Spectral radius",
                                                 _task_title(runs) and f"({_task_title(runs)})"])))
    return _save(fig, path)


def plot_overview(runs: Iterable[RunData | str | Path], path: str | Path, title: str | None = None) -> Path:
    """Loss, whole-sequence accuracy and spectral radius side by side in one PNG."""
    runs = _runs(runs)
    fig, (a, b, c) = _figure(3, width=5.2)
    _draw_loss(a, runs, _baseline(runs))
    a.set_title("loss")
    _draw_accuracy(b, runs)
    b.set_title("validation accuracy")
    _draw_spectral(c, runs)
    c.set_title("spectral radius")
    heading = title or _task_title(runs)
    if heading:
        fig.suptitle(heading)
    return _save(fig, path)


def plot_run(run_dir: str | Path, summary: dict | None = None) -> list[Path]:
    """Write ``loss.png`` and ``spectral_radius.png`` into a run folder; returns their paths."""
    files = RunFiles(run_dir)
    run = load_run(files.root, summary)
    return [plot_loss([run], files.loss_plot), plot_spectral_radius([run], files.spectral_plot)]


def _alignment_table(source) -> dict:
    """Columns of an ``alignment.csv`` (a file, a run folder, or already a mapping of columns)."""
    if isinstance(source, dict):
        return {k: np.asarray(v, dtype=np.float64) for k, v in source.items()}
    path = Path(source)
    if path.is_dir():
        path = path / "alignment.csv"
    if not path.is_file():
        raise TPGraphError(f"no alignment record at {str(path)!r}; train with protocol.alignment_every > 0")
    return read_metrics_csv(path)


def plot_alignment(source, path: str | Path, title: str | None = None, n_curves: int = 5) -> Path:
    """Alignment angles with the gradient (``alignment.csv`` of a run) in one PNG.

    Left: the angle between each parameter group's update and BPTT's
    gradient over training, and the mean over time steps of the angle
    between each hidden displacement and ``-dL/dh_t`` (dashed). Right: that
    angle per time step ``t`` at ``n_curves`` measurements spread over training.
    """
    table = _alignment_table(source)
    batch = table.get("batch")
    if batch is None or batch.size == 0:
        raise TPGraphError("the alignment record is empty")
    fig, (a, b) = _figure(2, width=5.6)
    groups = [k for k in table if k.startswith("angle_") and not k.startswith("angle_h_")]
    for i, k in enumerate(groups):
        a.plot(batch, table[k], label=k[len("angle_"):], color=_OTHER_COLORS[i % len(_OTHER_COLORS)], lw=1.2)
    if "angle_h_mean" in table:
        a.plot(batch, table["angle_h_mean"], "k--", lw=1.2, label="h_t (mean over t)")
    a.axhline(90, color="0.6", lw=0.8, ls=":")
    a.set_xlabel("training batches")
    a.set_ylabel("angle with the gradient (degrees)")
    a.set_ylim(-3, 180)  # an exact group (the output layer) sits at 0, visibly
    a.legend(fontsize=8)
    a.set_title("updates vs BPTT gradient")
    steps = sorted((int(k[len("angle_h_"):]), k) for k in table
                   if k.startswith("angle_h_") and k[len("angle_h_"):].isdigit())
    if steps:
        t = np.array([s for s, _ in steps])
        rows = np.unique(np.linspace(0, batch.size - 1, min(n_curves, batch.size)).round().astype(int))
        from matplotlib import colormaps

        cmap = colormaps["viridis"]
        for j, r in enumerate(rows):
            b.plot(t, [table[k][r] for _, k in steps], color=cmap(j / max(len(rows) - 1, 1)), lw=1.2,
                   marker=".", label=f"batch {int(batch[r])}")
        b.axhline(90, color="0.6", lw=0.8, ls=":")
        b.set_xlabel("time step t")
        b.set_ylabel("angle of h_hat_t - h_t with -dL/dh_t (degrees)")
        b.set_ylim(0, 180)
        b.legend(fontsize=8)
    b.set_title("hidden displacements vs -dL/dh_t")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
