"""Compare merge strategies (and credit rules) on the same tasks, seeds and budget.

Every strategy trains the paper's SRN from the same initialisation on the same
batches (the seeds); the table gives, over the seeds, the mean and spread of
the best and final whole-sequence accuracy and of the best validation loss,
and the alignment with BPTT at the end of training (the angle between the
update of ``W_h`` and BPTT's gradient of the same batch, and the mean over
time steps of the angle between each hidden displacement and ``-dL/dh_t``).

    python examples/compare_merges.py --quick             # a smoke run (~1 min)
    python examples/compare_merges.py --tasks copy --json copy.json --plot docs/results/alignment_copy_memory_T5.png
    python examples/compare_merges.py --tasks expansion --json expansion.json      # (side by side: 2 cores)
    python examples/compare_merges.py --combine copy.json expansion.json --write docs/merges.md

``--write`` replaces the text between the markers ``<!-- compare_merges:begin -->``
and ``<!-- compare_merges:end -->`` in that file with the table and how it was
made (command, date, machine, wall time). Each run is an ordinary trainer run
(``tpgraph.train.Trainer``) with ``protocol.alignment_every`` set, so its
folder under ``--runs`` holds metrics.csv and alignment.csv like any other run.
A fixed grid over a few strategies and seeds needs no search, so this loops
over trainer runs itself rather than through an Optuna study.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import tpgraph as tp
from tpgraph.merges import clip_sum
from tpgraph.train import Config, Trainer, apply_overrides

#: (label, config overrides): TP with four merges, feedback alignment, BPTT.
STRATEGIES = [
    ("TP linear (Eq. 22)", ["method.merge=linear"]),
    ("TP mean", ["method.merge=mean"]),
    ("TP weighted_step 1/(t+1)", ["method.merge=weighted_step"]),
    ("TP clipped", ["method.merge=clipped_probe"]),
    ("FA linear", ["method.credit=fa"]),
    ("BPTT", ["method.name=bptt"]),
]

TASK_KEYS = {
    "copy": ("copy memory, delay 5", ["task.name=copy_memory", "task.delay=5"]),
    "expansion": ("sequence expansion, length 10", ["task.name=sequence_expansion", "task.length=10"]),
}
TASKS = dict(TASK_KEYS.values())


def budget(quick: bool, batches: int = 3000, hidden: int = 64) -> list[str]:
    """The protocol of every run: ``batches`` in all, a fifth of them TP's inverse-only warm-up."""
    if quick:
        batches, hidden = 300, 32
    every = max(batches // 10, 1)
    return [f"protocol.n_batches={batches}", f"protocol.warmup={batches // 5}", f"protocol.val_every={every}",
            f"protocol.val_batches={5 if quick else 20}", f"protocol.alignment_every={max(batches // 15, 1)}",
            f"model.n_hidden={hidden}"]


def probe_clip_threshold(config: Config, n: int = 5) -> float:
    """The median per-sample norm of the hidden displacements of the linear merge at initialisation.

    Clipping at a fixed norm only means something on the displacements' own
    scale; this takes the scale at the start of training, from ``n`` batches.
    """
    from tpgraph.train.trainer import build_model, build_task, data_stream

    task = build_task(config)
    model = build_model(config, task)
    rng = data_stream(config.protocol.seed)
    eng = model.engine(task.length)
    norms = []
    for _ in range(n):
        x, y = task.batch(rng, config.protocol.batch_size)
        L, batch = model._batch(x, y)
        eng.step(batch, update_inverse=False, apply=False)
        for t in range(1, L + 1):
            norms.append(np.linalg.norm(eng.displacement(f"h_{t}"), axis=1))
    return float(np.median(np.concatenate(norms)))


def run_one(config: Config, run_dir: Path | None) -> dict:
    t0 = time.perf_counter()
    trainer = Trainer(config, run_dir)
    summary = trainer.run()
    align = trainer.alignment_rows[-1] if trainer.alignment_rows else {}
    rows = trainer.state.rows
    return {
        "best_seq_acc": summary["best"]["seq_acc"],
        "final_seq_acc": rows[-1]["seq_acc"] if rows else math.nan,
        "best_val_loss": summary["best"]["val_loss"],
        "angle_W_h": align.get("angle_W_h", math.nan),
        "angle_h_mean": align.get("angle_h_mean", math.nan),
        "status": summary["status"],
        "seconds": time.perf_counter() - t0,
        "alignment": trainer.alignment_rows,
    }


def run_comparison(tasks=TASKS, strategies=STRATEGIES, seeds=(0, 1, 2), quick=False, runs: Path | None = None,
                   log=print, batches: int = 3000, hidden: int = 64) -> list[dict]:
    """Train every (task, strategy, seed); returns one row per (task, strategy) with the per-seed results."""
    out = []
    for task_label, task_sets in tasks.items():
        base = apply_overrides(Config(), ["output.plots=false", "output.checkpoint_every=0", *task_sets,
                                          *budget(quick, batches, hidden)])
        threshold = probe_clip_threshold(base)
        tp.register_merge("clipped_probe", clip_sum, overwrite=True, jit=True, params=[threshold])
        for label, sets in strategies:
            results = []
            for seed in seeds:
                cfg = apply_overrides(base, [*sets, f"protocol.seed={seed}"])
                slug = re.sub(r"[^a-z0-9]+", "-", f"{task_label} {label} s{seed}".lower()).strip("-")
                res = run_one(cfg, runs / slug if runs is not None else None)
                results.append(res)
                log(f"  {task_label} | {label} | seed {seed}: best seq acc {res['best_seq_acc']:.4f}, "
                    f"final {res['final_seq_acc']:.4f}, angle W_h {res['angle_W_h']:.1f}, "
                    f"{res['seconds']:.0f} s")
            out.append({"task": task_label, "strategy": label, "results": results,
                        "clip_threshold": threshold if "clipped" in label else None})
    return out


def _ms(values, fmt="{:.3f}"):
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return "—"
    return (fmt + " ± " + fmt).format(v.mean(), v.std(ddof=1) if v.size > 1 else 0.0)


def format_table(rows: list[dict]) -> str:
    """Markdown: one line per (task, strategy); mean ± standard deviation over the seeds."""
    lines = ["| task | strategy | best seq. acc. | final seq. acc. | best val. loss | angle W_h (°) | "
             "angle h_t (°) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        res = r["results"]
        label = r["strategy"]
        if r["clip_threshold"] is not None:
            label += f" (max norm {r['clip_threshold']:.3g})"
        lines.append(f"| {r['task']} | {label} | {_ms(x['best_seq_acc'] for x in res)} | "
                     f"{_ms(x['final_seq_acc'] for x in res)} | {_ms((x['best_val_loss'] for x in res), '{:.4f}')} | "
                     f"{_ms((x['angle_W_h'] for x in res), '{:.1f}')} | {_ms((x['angle_h_mean'] for x in res), '{:.1f}')} |")
    return "\n".join(lines)


def provenance(commands: list, wall_s: float) -> str:
    """Which commands made the table, when, where, and how long it took."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = "?"
    from tpgraph.provenance import cpu_model

    cpu = cpu_model()
    made = " and ".join(f"`python examples/compare_merges.py {' '.join(argv)}`" for argv in commands)
    parallel = " (side by side, one process per task)" if len(commands) > 1 else ""
    return (f"Made with {made}{parallel} on "
            f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} (commit {commit}), "
            f"{cpu}, {os.cpu_count()} cores shared with other jobs, Python {platform.python_version()}, "
            f"one BLAS thread; wall time {wall_s / 60:.1f} min.")


def write_between_markers(path: Path, text: str) -> None:
    begin, end = "<!-- compare_merges:begin -->", "<!-- compare_merges:end -->"
    doc = path.read_text()
    if begin not in doc or end not in doc:
        raise SystemExit(f"{path}: the markers {begin} and {end} are missing")
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(head + begin + "\n" + text + "\n" + end + tail)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: 300 batches, 32 hidden units")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    ap.add_argument("--batches", type=int, default=3000, help="training batches per run (default 3000)")
    ap.add_argument("--hidden", type=int, default=64, help="hidden units (default 64)")
    ap.add_argument("--runs", type=Path, default=None, help="keep the run folders here (default: none)")
    ap.add_argument("--write", type=Path, default=None, help="put the table between the markers of this file")
    ap.add_argument("--plot", type=Path, default=None,
                    help="PNG of TP's (linear merge, seed 0) alignment angles over training on the first task")
    ap.add_argument("--tasks", nargs="+", choices=sorted(TASK_KEYS), default=sorted(TASK_KEYS),
                    help="which tasks (default both; run one per process to use two cores)")
    ap.add_argument("--json", type=Path, default=None, help="also save the results (with wall time) as JSON")
    ap.add_argument("--combine", type=Path, nargs="+", default=None,
                    help="no training: format the results of earlier --json files (run in parallel) together")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.combine:
        rows, wall, commands = [], 0.0, []
        for path in args.combine:
            saved = json.loads(path.read_text())
            rows += saved["rows"]
            commands.append(saved["argv"])
            wall = max(wall, saved["wall_s"])  # the processes ran side by side
    else:
        tasks = {label: sets for key, (label, sets) in TASK_KEYS.items() if key in args.tasks}
        rows = run_comparison(tasks=tasks, seeds=tuple(range(args.seeds)), quick=args.quick, runs=args.runs,
                              log=lambda s: print(s, file=sys.stderr, flush=True), batches=args.batches,
                              hidden=args.hidden)
        wall = time.perf_counter() - t0
        commands = [sys.argv[1:] if argv is None else list(argv)]
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "wall_s": wall, "argv": sys.argv[1:]}, default=float))
    table = format_table(rows)
    print(table)
    if args.write is not None:
        write_between_markers(args.write, provenance(commands, wall) + "\n\n" + table)
    if args.plot is not None:
        first = rows[0]["results"][0]["alignment"]
        columns = {k: np.array([r[k] for r in first]) for k in first[0]}
        from tpgraph.plots import plot_alignment

        plot_alignment(columns, args.plot, title=f"TP (DTP, linear merge) on {rows[0]['task']}, seed 0")
    return rows


if __name__ == "__main__":
    main()
