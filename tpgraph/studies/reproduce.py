"""The paper's Tables 1 and 2, reproduced with studies.

For every delay (Table 1, copy memory: T = 5, 10, 15, 20, 25) or length
(Table 2, sequence expansion: T = 10, 20, 30, 40) and for TP and BPTT:

1. **search**: one study, grouped by ``method.name`` x the task's key, the
   same budget for every cell: TPE over ``lr_f`` and ``lr_y`` (both
   methods) and ``lr_g`` and ``alpha`` (TP only; BPTT has no inverse and no
   target step), all log-uniform, with the median pruner fed the validation
   curve; the objective is the best validation loss (the paper's);
2. **final**: the best configuration of each cell re-run with fresh seeds
   (1001, 1002, ...) at the final protocol, as a second study whose one trial
   per cell has the searched values fixed;
3. **table**: per cell the mean and spread over the seeds of the best and the
   final validation loss and whole-sequence accuracy, the memoryless
   baseline, and the paper's numbers side by side, as Markdown and CSV, plus
   the loss and spectral-radius plots (like the paper's Figs. 2 and 3) of one
   delay.

``budget`` scales the protocol down for a quick look; the default is the
paper's (50 trials of 25000 batches per cell). Every table states the budget
that produced it. Rerunning the same command resumes both studies.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from ..provenance import machine
from .runner import Study, StudyProgress, fmt_value, make_executor
from .spec import parse_spec

__all__ = ["Budget", "BUDGETS", "TABLES", "reproduce", "table_rows"]

CSV_COLUMNS = ("task", "T", "method", "seeds", "best_val_loss", "best_val_accuracy", "final_val_loss",
               "final_val_accuracy", "baseline_loss", "paper_loss", "paper_accuracy")


@dataclass(frozen=True)
class Budget:
    """How much work a reproduction does (per cell: search trials, then final seeds)."""

    name: str
    trials: int = 50               # search trials per cell (method x T)
    batches: int = 25000           # training batches of a search trial
    val_batches: int = 500         # validation batches during the search
    final_batches: int = 25000     # training batches of a final run
    final_val_batches: int = 500
    final_seeds: int = 3
    warmup: int = 1000             # TP's inverse-only batches (search and final runs)
    val_every: int = 250
    start: tuple = ()              # (key, value) pairs every search tries first (the keys its space has)

    def describe(self) -> str:
        first = ("; each search's first trial " + ", ".join(f"{k}={v:g}" for k, v in self.start)
                 + " (the keys the variant searches)") if self.start else ""
        return (f"budget {self.name!r}: search {self.trials} TPE trials per cell of {self.batches} batches "
                f"(validation on {self.val_batches} batches every {self.val_every}, median pruner){first}, then the "
                f"best configuration re-run with {self.final_seeds} fresh seeds of {self.final_batches} batches "
                f"(validation on {self.final_val_batches} batches); TP warm-up {self.warmup} batches")


BUDGETS: dict[str, Budget] = {
    "full": Budget("full"),
    "medium": Budget("medium", trials=20, batches=8000, val_batches=100, final_batches=25000, warmup=1000),
    "quick": Budget("quick", trials=10, batches=4000, val_batches=100, final_batches=10000, final_val_batches=200,
                    warmup=400),
    "smoke": Budget("smoke", trials=2, batches=60, val_batches=2, final_batches=60, final_val_batches=2,
                    final_seeds=2, warmup=20, val_every=20),
}


@dataclass(frozen=True)
class TableDef:
    task: str
    key: str                                     # the config key of T
    values: tuple[int, ...]
    paper: dict                                  # T -> {"tp": (loss, acc %), "bptt": (loss, acc %)}
    plot_at: int                                 # the T whose runs are plotted like Figs. 2 and 3


TABLES: dict[str, TableDef] = {
    "table1": TableDef("copy_memory", "task.delay", (5, 10, 15, 20, 25), {
        5: {"tp": (3.59e-3, 100.0), "bptt": (0.6899, 0.0)},
        10: {"tp": (1.30e-3, 100.0), "bptt": (0.5809, 0.0)},
        15: {"tp": (1.34e-4, 99.99), "bptt": (0.5182, 0.0)},
        20: {"tp": (5.70e-3, 98.32), "bptt": (0.5205, 0.0)},
        25: {"tp": (1.36e-2, 92.88), "bptt": (0.4625, 0.0)},
    }, plot_at=25),
    "table2": TableDef("sequence_expansion", "task.length", (10, 20, 30, 40), {
        10: {"tp": (0.0005, 100.0), "bptt": (0.0001, 100.0)},
        20: {"tp": (0.0018, 99.34), "bptt": (0.0005, 100.0)},
        30: {"tp": (0.3233, 3.62), "bptt": (0.0007, 100.0)},
        40: {"tp": (1.0771, 0.0), "bptt": (0.0012, 99.49)},
    }, plot_at=30),
}

#: The searched ranges, log-uniform. A first pass (quick budget, Table 1) with lr_y in [1e-4, 1e-1] and
#: alpha in [1e-2, 10] put the best lr_y at the upper edge in 5 of 10 cells and alpha in one; both were widened.
SEARCH_SPACE = {
    "optimizer.lr_f": {"type": "log_uniform", "low": 1e-5, "high": 1e-2},
    "optimizer.lr_y": {"type": "log_uniform", "low": 1e-4, "high": 1.0},
    "optimizer.lr_g": {"type": "log_uniform", "low": 1e-5, "high": 1.0, "when": {"method.name": "tp"}},
    "method.alpha": {"type": "log_uniform", "low": 1e-2, "high": 1e2, "when": {"method.name": "tp"}},
}


def _base(table: TableDef, batches: int, val_batches: int, budget: Budget) -> dict:
    base = {"task": {"name": table.task}, "model": {"n_hidden": 128},
            "protocol": {"n_batches": batches, "val_batches": val_batches, "val_every": budget.val_every,
                         "warmup": min(budget.warmup, batches // 2)},
            "optimizer": {"name": "adam"}, "output": {"checkpoint_every": max(budget.val_every, batches // 10)}}
    if table.task == "sequence_expansion":
        base["task"]["length"] = table.values[0]
    return base


def search_space(ranges: dict[str, tuple[float, float]] | None = None) -> dict:
    """:data:`SEARCH_SPACE` with some ranges replaced (``{"optimizer.lr_y": (1e-4, 0.1)}``)."""
    space = {k: dict(v) for k, v in SEARCH_SPACE.items()}
    for key, (low, high) in (ranges or {}).items():
        if key not in space:
            raise ConfigError(f"--range {key}: the reproduction searches {', '.join(space)}; not {key!r}")
        space[key].update(low=float(low), high=float(high))
    return space


def search_spec(name: str, budget: Budget, values: tuple[int, ...] | None = None, space: dict | None = None) -> dict:
    """The search stage's spec (a plain mapping, as :func:`~tpgraph.studies.spec.parse_spec` takes)."""
    table = TABLES[name]
    return {"study": {"name": f"{name}-search", "trials": budget.trials, "seeds": [0], "sampler": "tpe",
                      "sampler_seed": 0, "pruner": "median", "objective": "best_val_loss",
                      "description": budget.describe()},
            "base": _base(table, budget.batches, budget.val_batches, budget),
            "space": space or SEARCH_SPACE,
            "groups": {"method.name": ["tp", "bptt"], table.key: list(values or table.values)}}


def final_spec(name: str, budget: Budget, values: tuple[int, ...] | None = None, space: dict | None = None) -> dict:
    """The final stage's spec: one trial per cell (its values enqueued), fresh seeds, no pruning."""
    table = TABLES[name]
    return {"study": {"name": f"{name}-final", "trials": 1, "seeds": [1001 + i for i in range(budget.final_seeds)],
                      "sampler": "random", "pruner": "none", "objective": "best_val_loss",
                      "description": budget.describe()},
            "base": _base(table, budget.final_batches, budget.final_val_batches, budget),
            "space": space or SEARCH_SPACE,
            "groups": {"method.name": ["tp", "bptt"], table.key: list(values or table.values)}}


def _summaries(run_dirs) -> list[dict]:
    from ..train.records import read_summary

    out = []
    for d in run_dirs or []:
        p = Path(d) / "summary.json"
        if p.exists():
            out.append(read_summary(p))
    return out


def _stats(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def table_rows(name: str, final: Study, search: Study | None = None) -> list[dict]:
    """One row per cell (T, method) from the final study's runs (and the search's best parameters)."""
    table = TABLES[name]
    search_best = {}
    if search is not None:
        from .report import edge_warnings

        for g in search.result().groups:
            search_best[(g["group"]["method.name"], g["group"][table.key])] = (
                g.get("best_params") or {}, edge_warnings(search, g), g["counts"])
    rows = []
    for g in final.optuna_studies():
        method, T = g.values["method.name"], g.values[table.key]
        trials = g.study.get_trials(deepcopy=False)
        sums = _summaries(trials[0].user_attrs.get("run_dirs") if trials else None)

        def pick(section, key, scale=1.0):
            vals = []
            for s in sums:
                v = (s.get(section) or {}).get(key)
                vals.append(None if v is None or not math.isfinite(v) else v * scale)
            return _stats(vals)

        bl, bl_sd = pick("best", "val_loss")
        ba, ba_sd = pick("best", "seq_acc", 100.0)
        fl, fl_sd = pick("final", "val_loss")
        fa, fa_sd = pick("final", "seq_acc", 100.0)
        paper = table.paper[T][method]
        params, edges, counts = search_best.get((method, T), ({}, [], {}))
        rows.append({
            "task": table.task, "T": T, "method": method, "seeds": len(sums),
            "best_val_loss": bl, "best_val_loss_sd": bl_sd, "best_val_accuracy": ba, "best_val_accuracy_sd": ba_sd,
            "final_val_loss": fl, "final_val_loss_sd": fl_sd, "final_val_accuracy": fa,
            "final_val_accuracy_sd": fa_sd,
            "baseline_loss": sums[0].get("baseline_loss") if sums else None,
            "paper_loss": paper[0], "paper_accuracy": paper[1],
            "statuses": ",".join(s.get("status", "?") for s in sums),
            "ms_per_batch": _stats([s.get("ms_per_batch") for s in sums])[0],
            "params": params, "at_edge": edges, "search_counts": counts,
        })
    rows.sort(key=lambda r: (r["T"], r["method"] != "tp"))
    return rows


def _csv(rows: list[dict], columns: tuple[str, ...] = CSV_COLUMNS) -> str:
    """``rows`` as CSV text with ``columns`` (floats to 6 significant digits, None and NaN empty)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([("" if r[c] is None or (isinstance(r[c], float) and math.isnan(r[c])) else
                     (f"{r[c]:.6g}" if isinstance(r[c], float) else r[c])) for c in columns])
    return buf.getvalue()


def _pm(mean: float, sd: float, spec: str = ".3g", unit: str = "") -> str:
    if mean is None or not math.isfinite(mean):
        return "-"
    return f"{mean:{spec}}{unit} ± {sd:{spec}}{unit}" if sd and math.isfinite(sd) else f"{mean:{spec}}{unit}"


def _markdown(name: str, rows: list[dict], budget: Budget, meta: dict) -> str:
    table = TABLES[name]
    label = "delay" if table.key == "task.delay" else "length"
    lines = [f"# Table {name[len('table'):]}: {table.task.replace('_', ' ')}, reproduced with tpgraph studies", "",
             f"Made by `{meta['command']}` on {meta['machine']}, {meta['date']}; wall time {meta['wall']} "
             f"from the first trial's start to the last one's end.", "",
             budget.describe().capitalize()[0] + budget.describe()[1:] + ".", "",
             "Values are means ± standard deviation over the final seeds; accuracy is the percentage of "
             "validation sequences right at every position. *best* is the best validation point of a run (what "
             "the paper reports), *final* the last one.", "",
             f"| {label} T | method | best val loss | best accuracy | final val loss | final accuracy | baseline | "
             f"paper loss | paper accuracy | ms/batch |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['T']} | {r['method']} | {_pm(r['best_val_loss'], r['best_val_loss_sd'])} | "
                     f"{_pm(r['best_val_accuracy'], r['best_val_accuracy_sd'], '.4g', '%')} | "
                     f"{_pm(r['final_val_loss'], r['final_val_loss_sd'])} | "
                     f"{_pm(r['final_val_accuracy'], r['final_val_accuracy_sd'], '.4g', '%')} | "
                     f"{fmt_value(r['baseline_loss'])} | {r['paper_loss']:.4g} | {r['paper_accuracy']:.4g}% | "
                     f"{fmt_value(r['ms_per_batch'])} |")
    lines += ["", "## The searched configurations", "",
              "| T | method | lr_f | lr_g | lr_y | alpha | search trials (complete / pruned / failed) | at an edge |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["params"]
        c = r["search_counts"] or {}
        lines.append(f"| {r['T']} | {r['method']} | {fmt_value(p.get('optimizer.lr_f'))} | "
                     f"{fmt_value(p.get('optimizer.lr_g'))} | {fmt_value(p.get('optimizer.lr_y'))} | "
                     f"{fmt_value(p.get('method.alpha'))} | {c.get('complete', 0)} / {c.get('pruned', 0)} / "
                     f"{c.get('fail', 0)} | {', '.join(r['at_edge']) or 'none'} |")
    lines += ["", "Search ranges (log-uniform): " + ", ".join(
        f"`{k}` [{v['low']:g}, {v['high']:g}]" + (" (TP only)" if "when" in v else "")
        for k, v in meta["space"].items()) + ".", ""]
    return "\n".join(lines)


def reproduce(name: str, folder: str | Path, budget: Budget, *, scheduler: str | None = None,
              workers: int | None = None, storage: str | None = None, progress: str = "off",
              values: tuple[int, ...] | None = None, ranges: dict | None = None, command: str = "",
              say: Callable[[str], None] = print) -> dict:
    """Run (or resume) the reproduction of ``name`` in ``folder``; returns the rows and the files written.

    ``values`` restricts the delays or lengths (default: the paper's); ``ranges``
    replaces searched ranges (:func:`search_space`).
    """
    if name not in TABLES:
        raise ConfigError(f"unknown table {name!r}; choose one of {', '.join(TABLES)}")
    table = TABLES[name]
    if values:
        bad = [v for v in values if v not in table.paper]
        if bad:
            raise ConfigError(f"{name} has T in {list(table.values)}; not {bad}")
    folder = Path(folder)
    t0 = time.perf_counter()
    space = search_space(ranges)
    sspec = parse_spec(search_spec(name, budget, values, space))
    fspec = parse_spec(final_spec(name, budget, values, space))
    search = Study(sspec, folder / "search", storage=None if storage is None else storage)
    final = Study(fspec, folder / "final", storage=None if storage is None else storage)
    executor = make_executor(scheduler, workers)
    try:
        if getattr(executor, "dashboard", None):
            say(f"Dask dashboard: {executor.dashboard}")
        say(f"{name}: search ({budget.describe()})")
        search.run(executor, progress=StudyProgress(progress))
        best = {tuple(sorted(g["group"].items())): g.get("best_params") for g in search.result().groups}
        for g in final.optuna_studies():
            params = best.get(tuple(sorted(g.values.items())))
            if params is None:
                raise ConfigError(f"{name}: the search found no complete trial for {g.values}; "
                                  f"rerun with a larger budget")
            if not g.study.get_trials(deepcopy=False):
                g.study.enqueue_trial(params)
        say(f"{name}: final runs of the best configurations")
        final.run(executor, progress=StudyProgress(progress))
    finally:
        executor.close()
    wall = max(time.perf_counter() - t0, _span(search, final))
    rows = table_rows(name, final, search)
    from datetime import date

    meta = {"command": command or f"tpgraph reproduce {name} --budget {budget.name}",
            "machine": machine(),
            "date": date.today().isoformat(), "wall": _duration(wall), "space": space}
    from ..train.records import atomic_write_json, atomic_write_text

    files = {"md": folder / f"{name}.md", "csv": folder / f"{name}.csv", "json": folder / f"{name}.json"}
    atomic_write_text(files["md"], _markdown(name, rows, budget, meta))
    atomic_write_text(files["csv"], _csv(rows))
    atomic_write_json(files["json"], {"meta": meta, "budget": asdict(budget), "rows": rows})
    files.update(_plots(name, rows, final, folder, values))
    return {"rows": rows, "files": files, "wall_s": wall}


def _plots(name: str, rows, final: Study, folder: Path, values) -> dict:
    from ..plots import plot_loss, plot_spectral_radius

    table = TABLES[name]
    T = table.plot_at if not values or table.plot_at in values else values[-1]
    runs = []
    for g in final.optuna_studies():
        trials = g.study.get_trials(deepcopy=False)
        dirs = trials[0].user_attrs.get("run_dirs") if trials else None
        if g.values[table.key] == T and dirs and (Path(dirs[0]) / "metrics.csv").exists():
            runs.append(Path(dirs[0]))
    if not runs:
        return {}
    label = "delay" if table.key == "task.delay" else "length"
    return {"loss": plot_loss(runs, folder / f"{name}_loss_T{T}.png", title=f"{name}: {label} {T}, first seed"),
            "spectral": plot_spectral_radius(runs, folder / f"{name}_spectral_T{T}.png",
                                             title=f"{name}: {label} {T}, first seed")}


def _span(*studies: Study) -> float:
    """Seconds from the first trial's start to the last trial's end over ``studies`` (all sessions)."""
    starts, ends = [], []
    for st in studies:
        for g in st.optuna_studies():
            for t in g.study.get_trials(deepcopy=False):
                if t.datetime_start is not None:
                    starts.append(t.datetime_start)
                if t.datetime_complete is not None:
                    ends.append(t.datetime_complete)
    return (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0


def _duration(seconds: float) -> str:
    from ..progress import format_duration

    return format_duration(seconds) + (" (h:mm:ss)" if seconds >= 3600 else " (m:ss)")


def budget_from(name: str, **overrides: Any) -> Budget:
    """A named budget with some fields replaced (``None`` keeps the named value)."""
    if name not in BUDGETS:
        raise ConfigError(f"unknown budget {name!r}; choose one of {', '.join(BUDGETS)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    b = BUDGETS[name]
    return replace(b, name=name if not changes else f"{name}+" + ",".join(f"{k}={v}" for k, v in changes.items()),
                   **changes)
