"""Reading a study back: the best configuration per group as a table, and its plots.

Everything here reads the storage through Optuna's own API and the trials' run
folders, so a report can be made while a study still runs, and the same
storage opens in ``optuna-dashboard sqlite:///STUDY/study.db``.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path
from typing import Any

from .runner import Study, fmt_value

__all__ = ["study_table", "trial_table", "write_report", "format_table", "edge_warnings"]


def study_table(study: Study) -> list[dict]:
    """One row per group: counts, the best trial's value, per-seed values and parameters."""
    rows = []
    for g in study.result().groups:
        row: dict[str, Any] = {**{k: v for k, v in g["group"].items()}}
        row["complete"], row["pruned"], row["failed"] = (g["counts"]["complete"], g["counts"]["pruned"],
                                                         g["counts"]["fail"])
        row["best_trial"] = g.get("best_number")
        row[study.spec.objective.name] = g.get("best_value")
        vals = g.get("seed_values") or []
        row["seed_values"] = " ".join(fmt_value(v) for v in vals)
        for p in study.spec.params_for(g["group"]):
            row[p.key] = (g.get("best_params") or {}).get(p.key)
        row["at_edge"] = ", ".join(edge_warnings(study, g))
        rows.append(row)
    return rows


def trial_table(study: Study) -> list[dict]:
    """One row per finished trial of every group: its parameters, value, spread over seeds, state.

    For comparisons (a grid over ``method.merge``, say) where every trial is a
    result, not only the best one.
    """
    from optuna.trial import TrialState

    rows = []
    for g in study.optuna_studies():
        for t in g.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            vals = [v for v in (t.user_attrs.get("seed_values") or []) if v is not None]
            row: dict[str, Any] = {**g.values, "trial": t.number, **{k: v for k, v in t.params.items()}}
            row[study.spec.objective.name] = t.value
            row["sd"] = statistics.stdev(vals) if len(vals) > 1 else None
            row["seed_values"] = " ".join(fmt_value(v) for v in vals)
            row["state"] = t.state.name.lower()
            rows.append(row)
    return rows


def edge_warnings(study: Study, group_row: dict) -> list[str]:
    """The searched parameters whose best value lies in the outer 5% of its range (log scale where searched log)."""
    out = []
    best = group_row.get("best_params") or {}
    for p in study.spec.params_for(group_row["group"]):
        if p.type == "categorical" or p.key not in best:
            continue
        v = float(best[p.key])
        lo, hi = float(p.low), float(p.high)
        if p.log:
            v, lo, hi = math.log(v), math.log(lo), math.log(hi)
        frac = (v - lo) / (hi - lo)
        if frac < 0.05 or frac > 0.95:
            out.append(f"{p.key} {'low' if frac < 0.05 else 'high'}")
    return out


def _columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return fmt_value(v)
    return "" if v is None else str(v)


def format_table(rows: list[dict], markdown: bool = False) -> str:
    """Rows as an aligned text table, or as a Markdown table."""
    cols = _columns(rows)
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines)
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_columns(rows), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def write_report(study: Study, out: str | Path | None = None, top: int = 3) -> dict:
    """Write ``best.csv``, ``best.md``, ``trials.csv`` (every finished trial) and the plots into ``out``.

    ``out`` defaults to ``STUDY/report``.

    Plots per group: the objective against each searched parameter (log axes
    where searched log; pruned trials at their last reported value, hollow),
    and the validation curves of the ``top`` best trials (every seed).
    Returns ``{"rows": ..., "files": [...]}``.
    """
    from ..train.records import atomic_write_text

    out = Path(out) if out is not None else study.folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = study_table(study)
    files = [out / "best.csv", out / "best.md", out / "trials.csv"]
    atomic_write_text(files[0], _csv_text(rows))
    atomic_write_text(files[2], _csv_text(trial_table(study)))
    header = (f"# Study {study.spec.name}\n\nObjective: {study.spec.objective.name} "
              f"({study.spec.objective.direction}), {study.spec.aggregate} over seeds {list(study.spec.seeds)}; "
              f"{study.spec.trials} trials per group, sampler {study.spec.sampler}, pruner {study.spec.pruner_name}."
              f"\nStorage: `{study.storage_url}`\n\n")
    atomic_write_text(files[1], header + format_table(rows, markdown=True) + "\n")
    for g in study.optuna_studies():
        files += _plot_group(study, g, out, top)
    return {"rows": rows, "files": files}


def _plot_group(study: Study, g, out: Path, top: int) -> list[Path]:
    from optuna.trial import TrialState

    from ..plots import _figure, _save
    from ..train.records import read_metrics_csv

    spec = study.spec
    obj = spec.objective
    trials = g.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    params = [p for p in spec.params_for(g.values)]
    files = []
    if params and trials:
        fig, axes = _figure(len(params), width=4.2, height=3.6)
        for ax, p in zip(axes, params):
            for state in (TrialState.COMPLETE, TrialState.PRUNED):
                pts = [(t.params[p.key], t.value if t.value is not None else
                        (list(t.intermediate_values.values())[-1] if t.intermediate_values else None))
                       for t in trials if t.state == state and p.key in t.params]
                pts = [(x, y) for x, y in pts if y is not None and math.isfinite(y)]
                if not pts:
                    continue
                xs, ys = zip(*pts)
                if p.type == "categorical":
                    labels = [str(c) for c in p.choices]
                    xs = [labels.index(str(x)) for x in xs]
                    ax.set_xticks(range(len(labels)), labels)
                face = "C0" if state == TrialState.COMPLETE else "none"
                ax.scatter(xs, ys, marker="o", facecolors=face, edgecolors="C0",
                           label="complete" if state == TrialState.COMPLETE else "pruned (last value)")
            if p.log:
                ax.set_xscale("log")
            if obj.name.endswith("loss"):
                ax.set_yscale("log")
            ax.set_xlabel(p.key)
            ax.set_ylabel(obj.name)
            ax.grid(True, alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{spec.name}: {g.slug}")
        files.append(_save(fig, out / f"{g.slug}_objective.png"))
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    complete.sort(key=lambda t: t.value, reverse=obj.direction == "maximize")
    if complete:
        fig, (ax,) = _figure(1)
        for rank, t in enumerate(complete[:top]):
            for j, d in enumerate(t.user_attrs.get("run_dirs") or []):
                path = Path(d) / "metrics.csv"
                if not path.exists():
                    continue
                m = read_metrics_csv(path)
                ax.plot(m["batch"], m[obj.column], color=f"C{rank}", alpha=0.85,
                        label=f"trial {t.number} ({obj.name} {t.value:.3g})" if j == 0 else None)
        if obj.column == "val_loss":
            ax.set_yscale("log")
            base = study.spec.config_for(g.values, {})
            from ..train.trainer import build_task
            baseline = build_task(base).baseline_loss
            if baseline is not None:
                ax.axhline(baseline, color="k", ls="--", lw=1, label="memoryless baseline")
        ax.set_xlabel("batch")
        ax.set_ylabel(obj.column)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"{spec.name}: {g.slug}, best {min(top, len(complete))} trials")
        files.append(_save(fig, out / f"{g.slug}_curves.png"))
    return files
