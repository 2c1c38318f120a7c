"""The ``tpgraph`` command line: ``train``, ``compare``, ``plot``, ``config``, ``sweep``, ``reproduce``, ``research``.

Exit status: 0 when the run completed, 1 when it diverged or was aborted by a
stop rule (the run folder records why), 2 for a user error (a bad flag, key,
value or file: one line ``tpgraph: error: ...``, no traceback unless
``--debug``), 130 when interrupted by Ctrl-C (after saving a checkpoint).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import sys
from pathlib import Path
from typing import Sequence

from .errors import TPGraphError

EXIT_OK, EXIT_STOPPED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

_TRAIN_EXAMPLES = """\
examples:
  tpgraph train examples/configs/quick.toml
      the README's run: TP on copy memory (delay 5), about 20 s on 2 cores
  tpgraph train examples/configs/copy_memory_tp.toml --batches 5000 --seed 3
  tpgraph train --method bptt --delay 10 --set optimizer.lr_f=3e-4
  tpgraph train --resume runs/copy_memory-tp-20250101-120000
      continue a killed or interrupted run exactly where its last checkpoint left it

Without CONFIG the paper's protocol is used (copy memory, delay 5, 25000
batches of 20, validation on 500 batches). Settings are applied in this order:
the defaults, CONFIG, each --set, then the named flags. `tpgraph config --keys`
lists every key. Each run writes a folder under output.runs_dir (default
runs/) holding config.toml, metrics.csv, summary.json, weights.npz, plots and
the last checkpoint. Ctrl-C stops after the current batch and saves a
checkpoint (press it twice to stop at once).

exit status: 0 completed, 1 diverged or stopped by a rule (the reason is in
summary.json), 2 a usage error, 130 interrupted.
"""

_COMPARE_EXAMPLES = """\
examples:
  tpgraph compare examples/configs/quick.toml
  tpgraph compare --delay 10 --batches 8000 --bptt-set optimizer.lr_f=1e-3

Both runs use the same task, seed, initialisation and training batches; only
method.name differs (and whatever --bptt-set changes for the BPTT run, e.g. its
own learning rates). The comparison folder holds tp/ and bptt/ run folders,
comparison.json and the plots (overview.png, loss.png, spectral_radius.png).
"""

_PLOT_EXAMPLES = """\
examples:
  tpgraph plot runs/compare-copy_memory-20250101-120000/tp runs/compare-copy_memory-20250101-120000/bptt -o tp_vs_bptt.png
  tpgraph plot runs/my-run --kind loss -o loss.png
"""

_CONFIG_EXAMPLES = """\
examples:
  tpgraph config --keys                      every key, its default and what it means
  tpgraph config examples/configs/quick.toml --set method.name=bptt > bptt.toml
"""


_SWEEP_EXAMPLES = """\
examples:
  tpgraph sweep examples/studies/smoke.toml              a tiny search, about a minute on 2 cores
  tpgraph sweep examples/studies/lr_search.toml --scheduler tcp://10.0.0.5:8786 --storage postgresql://...
  tpgraph sweep report studies/smoke                     best configuration per group: table, CSV, Markdown, plots
  tpgraph sweep resume studies/smoke                     continue an interrupted study from its folder

A spec is TOML: [study] (trials, seeds, objective, sampler, pruner), [base]
(any run config keys, or study.base_config = "file.toml"), [space] (the
searched keys: log_uniform, uniform, int, categorical) and [groups] (one search
per combination). Rerunning the same command resumes the study: finished
trials are kept, trials whose process died are retried once. The storage opens
in a browser with `optuna-dashboard sqlite:///studies/NAME/study.db`.
"""

_REPRODUCE_EXAMPLES = """\
examples:
  tpgraph reproduce table1 --budget quick                TP and BPTT at delays 5-25, a scaled-down protocol
  tpgraph reproduce table2 --budget quick --only 30 --only 40
  tpgraph reproduce table1                               the paper's protocol: 50 trials of 25000 batches per cell

Budgets: full (50 trials x 25000 batches, 3 seeds x 25000), medium (20 x 8000,
3 x 25000), quick (10 x 4000, 3 x 10000), smoke (a seconds-long check). Rerunning
the same command resumes it.
"""

_RESEARCH_EXAMPLES = """\
examples:
  tpgraph research list                                    the variants and what each overrides
  tpgraph research run baseline bptt truncate_10           search + final seeds, both tasks
  tpgraph research run analytic --task copy_memory --only 50
  tpgraph research table                                   docs/results/research.md and research.csv
  tpgraph research inspect baseline analytic --only 30      re-run a final seed with alignment measured

Tasks and lengths: sequence expansion T = 30, 40; copy memory delays 50, 100, 200.
Every variant gets the same search budget as its baselines. Rerunning resumes.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line ``tpgraph: error: ...`` and exit status 2."""

    def error(self, message):
        raise _UsageError(f"{message} (see: {self.prog} --help)")


class _UsageError(TPGraphError):
    pass


# ---------------------------------------------------------------------- BLAS threads
def limit_blas_threads(n: int) -> list[str]:
    """Set the thread count of every OpenBLAS loaded in this process (NumPy's, SciPy's for Numba).

    The SRN's matrices are small: one thread is faster than two fighting over
    2 cores (and leaves the other core to a second run). Returns the libraries
    changed; does nothing where no OpenBLAS is found.
    """
    changed = []
    try:
        with open("/proc/self/maps", encoding="utf-8") as fh:
            paths = {parts[-1] for parts in map(str.split, fh) if len(parts) >= 6 and "openblas" in parts[-1].lower()}
    except OSError:
        return changed
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                       "openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(lib, symbol, None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int]
                fn(int(n))
                changed.append(path)
                break
    return changed


def _setup_threads(args) -> None:
    threads = getattr(args, "threads", None)
    if threads is None:
        if any(v in os.environ for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")):
            return
        threads = 1
    import scipy.linalg.cython_blas  # noqa: F401  (loads the BLAS Numba's np.dot uses)
    limit_blas_threads(threads)


# ---------------------------------------------------------------------- arguments
def _int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


#: Named flags: (flag, config key, type, help).
_FLAGS = (
    ("--method", "method.name", str, "tp or bptt"),
    ("--delay", "task.delay", _positive_int, "copy memory delay T"),
    ("--batches", "protocol.n_batches", _positive_int, "training batches in all"),
    ("--warmup", "protocol.warmup", _nonneg_int, "TP's inverse-only warm-up batches"),
    ("--hidden", "model.n_hidden", _positive_int, "hidden units"),
    ("--seed", "protocol.seed", _nonneg_int, "seed of initialisation, batches and noise"),
    ("--alpha", "method.alpha", _positive_float, "TP's target step size"),
    ("--lr-f", "optimizer.lr_f", _positive_float, "forward learning rate"),
    ("--lr-g", "optimizer.lr_g", _positive_float, "inverse learning rate"),
    ("--lr-y", "optimizer.lr_y", _positive_float, "output-layer learning rate"),
    ("--val-every", "protocol.val_every", _positive_int, "batches between validation points"),
    ("--val-batches", "protocol.val_batches", _positive_int, "batches in the validation set"),
    ("--checkpoint-every", "output.checkpoint_every", _nonneg_int, "batches between checkpoints (0: end only)"),
    ("--runs-dir", "output.runs_dir", str, "folder receiving the run folders"),
    ("--name", "output.name", str, "the run folder's name"),
    ("--memory-limit", "protocol.memory_limit", str, "the most memory a run may take, e.g. 8G ('off': no check)"),
)


def _add_common(p: argparse.ArgumentParser, *, config: bool = True) -> None:
    if config:
        p.add_argument("config", nargs="?", metavar="CONFIG", help="a TOML configuration file (optional)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                       help="override one key, e.g. --set protocol.n_batches=2000 (repeatable)")
        group = p.add_argument_group("shortcuts for common keys")
        for flag, key, kind, help_text in _FLAGS:
            group.add_argument(flag, type=kind, metavar=flag[2:].replace("-", "_").upper(), default=None,
                               dest="flag_" + key.replace(".", "__"), help=f"{help_text} ({key})")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output (the final summary only)")
    p.add_argument("--progress", choices=("auto", "bar", "lines", "off"), default="auto",
                   help="progress display: a bar on a terminal, a line per validation point otherwise (auto)")
    p.add_argument("--no-plots", action="store_true", help="do not draw the plots at the end")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="BLAS threads (default 1, unless OPENBLAS_NUM_THREADS or OMP_NUM_THREADS is set)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tpgraph", description=(
        "Train simple recurrent networks with target propagation (Dai & Chin) or BPTT on the paper's "
        "tasks, compare the two, search hyper-parameters on Dask (sweep, reproduce), compare TP variants "
        "with their baselines under equal searches (research), and plot recorded runs."),
        epilog="Run `tpgraph COMMAND --help` for each command's options and examples.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("train", help="train one model (TP or BPTT) and record the run", epilog=_TRAIN_EXAMPLES,
                       formatter_class=fmt, description="Train one SRN with the paper's protocol and write a run folder.")
    _add_common(p)
    _add_run_options(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint "
                   "(takes no CONFIG or overrides)")

    p = sub.add_parser("compare", help="train TP and BPTT from the same initialisation, side by side",
                       epilog=_COMPARE_EXAMPLES, formatter_class=fmt,
                       description="Train TP and BPTT on the same task, seed and initialisation; print a table.")
    _add_common(p)
    _add_run_options(p)
    p.add_argument("--bptt-set", action="append", default=[], metavar="KEY=VALUE", dest="bptt_sets",
                   help="override a key for the BPTT run only, e.g. --bptt-set optimizer.lr_f=1e-3")
    p.add_argument("--resume", metavar="COMPARE_DIR", help="continue an interrupted comparison")

    p = sub.add_parser("plot", help="plot recorded runs (loss vs baseline, accuracy, spectral radius)",
                       epilog=_PLOT_EXAMPLES, formatter_class=fmt,
                       description="Draw the loss (vs the memoryless baseline), accuracy and spectral radius "
                                   "of one or more run folders into one PNG.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (as written by train or compare)")
    p.add_argument("-o", "--output", metavar="FILE", default="runs.png", help="PNG file to write (default runs.png)")
    p.add_argument("--kind", choices=("overview", "loss", "spectral"), default="overview",
                   help="overview: three panels; loss: like the paper's Fig. 2; spectral: like Fig. 3")
    p.add_argument("--title", default=None, help="the figure's title")
    _add_common(p, config=False)

    p = sub.add_parser("config", help="print a resolved configuration as TOML (or every key with --keys)",
                       epilog=_CONFIG_EXAMPLES, formatter_class=fmt,
                       description="Print the configuration that train would use, as TOML.")
    _add_common(p)
    p.add_argument("--keys", action="store_true", help="list every key with its default and meaning")

    p = sub.add_parser("sweep", help="run a study (hyper-parameter search, seed sweep) on Dask, or report one",
                       epilog=_SWEEP_EXAMPLES, formatter_class=fmt,
                       description="tpgraph sweep SPEC.toml runs (or resumes) a study; tpgraph sweep report STUDY "
                                   "prints and writes its best configurations and plots; tpgraph sweep resume STUDY "
                                   "continues one from its folder.")
    p.add_argument("what", nargs="+", metavar="SPEC | report STUDY | resume STUDY",
                   help="a study spec (TOML), or report / resume and a study folder")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="the study folder (default studies/NAME; an existing one with the same spec is resumed)")
    _add_cluster_options(p)
    p.add_argument("--top", type=_positive_int, default=3, help="report: validation curves of this many best trials")
    p.add_argument("--all", action="store_true", dest="all_trials",
                   help="report: print every finished trial, not only the best of each group")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")

    p = sub.add_parser("reproduce", help="reproduce the paper's Table 1 (copy memory) or Table 2 (sequence "
                       "expansion) with searches for TP and BPTT", epilog=_REPRODUCE_EXAMPLES, formatter_class=fmt,
                       description="For every delay or length and both methods: a TPE search with the same budget, "
                                   "then the best configuration re-run with fresh seeds; writes TABLE.md, TABLE.csv "
                                   "and plots into the output folder.")
    p.add_argument("table", choices=("table1", "table2"), help="table1: copy memory; table2: sequence expansion")
    p.add_argument("--budget", default="full", choices=("full", "medium", "quick", "smoke"),
                   help="how much work (default full: the paper's 50 trials of 25000 batches per cell)")
    p.add_argument("--trials", type=_positive_int, default=None, help="search trials per cell (overrides the budget)")
    p.add_argument("--batches", type=_positive_int, default=None, help="batches per search trial (overrides)")
    p.add_argument("--val-batches", type=_positive_int, default=None, help="validation batches in the search")
    p.add_argument("--final-batches", type=_positive_int, default=None, help="batches per final run (overrides)")
    p.add_argument("--final-seeds", type=_positive_int, default=None, help="fresh seeds of the final runs")
    p.add_argument("--only", type=_positive_int, action="append", default=None, metavar="T",
                   help="only this delay or length (repeatable)")
    p.add_argument("--range", action="append", default=[], metavar="KEY=LOW:HIGH", dest="ranges",
                   help="replace a searched range, e.g. --range optimizer.lr_y=1e-4:1 (repeatable)")
    p.add_argument("--out", metavar="DIR", default=None, help="the reproduction folder (default studies/TABLE-BUDGET)")
    _add_cluster_options(p)
    p.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")

    p = sub.add_parser("research", help="compare TP variants (truncation, analytic inverse, inverse training, "
                       "stability remedies) with their baselines, each searched with the same budget",
                       epilog=_RESEARCH_EXAMPLES, formatter_class=fmt,
                       description="run: for each variant and task, a TPE search per length, then the best "
                                   "configuration re-run with fresh seeds. table: collect every finished variant "
                                   "into research.csv and the table section of research.md.")
    p.add_argument("action", choices=("run", "table", "inspect", "list"),
                   help="run variants, write the table, inspect finished cells (alignment angles, inverse losses), "
                        "or list variants")
    p.add_argument("variants", nargs="*", metavar="VARIANT", help="run: the variants (see 'tpgraph research list')")
    p.add_argument("--task", action="append", default=None, dest="tasks", choices=("sequence_expansion", "copy_memory"),
                   help="run: only this task (repeatable; default both)")
    p.add_argument("--only", type=_positive_int, action="append", default=None, metavar="T",
                   help="run: only this delay or length (repeatable)")
    p.add_argument("--budget", default="research", choices=("research", "long", "xlong", "copy_long", "smoke"),
                   help="how much work per cell (default research: 8 TPE trials of 3000 batches, then 3 seeds of "
                        "6000; long: 4 trials of 12000 from a fixed first setting, then 3 seeds of 25000; xlong: "
                        "the same search, then 3 seeds of 40000; copy_long: 3 trials of 6000 from the setting the "
                        "research search found for the paper's TP at delay 200, then 3 seeds of 15000; rows of other "
                        "budgets than research are labelled VARIANT@BUDGET)")
    p.add_argument("--folder", metavar="DIR", default=None, help="where the studies go "
                   "(default studies/research, studies/research-BUDGET for other budgets; rerunning resumes)")
    p.add_argument("--out", metavar="DIR", default="docs/results", help="table: where research.md/csv go")
    p.add_argument("--fresh", action="store_true",
                   help="table, inspect: only the folder's studies (default: rows of OUT/research.json, and "
                        "inspected cells of OUT/research_inspect.json, that the folder does not redo are kept, with "
                        "the date they were measured)")
    _add_cluster_options(p)
    p.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    return parser


def _add_cluster_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="a Dask scheduler (tcp://HOST:PORT); default: a LocalCluster on this machine; "
                        "serial: one trial at a time in this process")
    p.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                   help="LocalCluster worker processes (default: one per core)")
    p.add_argument("--storage", metavar="URL", default=None,
                   help="an Optuna RDB storage URL (default sqlite:///STUDY/study.db)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    p.add_argument("--progress", choices=("auto", "bar", "lines", "off"), default="auto",
                   help="a status line on a terminal, nothing otherwise (auto); lines: a line per finished trial")


def _config_overrides(args) -> list[str]:
    """The overrides that change a run's configuration (``--set`` and the named flags)."""
    out = list(args.sets)
    for _flag, key, _kind, _help in _FLAGS:
        value = getattr(args, "flag_" + key.replace(".", "__"))
        if value is not None:
            out.append(f"{key}={json.dumps(value) if isinstance(value, str) else repr(value)}")
    return out


def _overrides(args) -> list[str]:
    """All overrides of a new run: its configuration's and ``--no-plots`` (``output.plots=false``)."""
    out = _config_overrides(args)
    if getattr(args, "no_plots", False):
        out.append("output.plots=false")
    return out


def _resolve(args, extra: Sequence[str] = ()):
    from .train.config import load_config
    return load_config(args.config, [*_overrides(args), *extra])


def _progress(args, label: str):
    from .progress import Progress
    return Progress("off" if args.quiet else args.progress, label=label)


# ---------------------------------------------------------------------- printing
def _fmt(x, spec=".4g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, spec)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _at(batch) -> str:
    return "" if batch is None else f" (batch {batch})"


def format_summary(summary: dict) -> str:
    """The few lines printed at the end of ``tpgraph train``."""
    best, final = summary["best"], summary.get("final") or {}
    base = summary.get("baseline_loss")
    lines = [
        f"status:             {summary['status']} -- {summary.get('reason') or ''}".rstrip(" -"),
        f"best validation:    loss {_fmt(best['val_loss'])}{_at(best['val_loss_batch'])}, "
        f"sequence accuracy {_pct(best['seq_acc'])}{_at(best['seq_acc_batch'])}",
        f"final validation:   loss {_fmt(final.get('val_loss'))}, sequence accuracy {_pct(final.get('seq_acc'))}, "
        f"step accuracy {_pct(final.get('step_acc'))} at batch {final.get('batch', '-')}",
    ]
    if base is not None:
        verdict = ""
        if best["val_loss"] is not None:
            verdict = (f" -- beaten ({base / best['val_loss']:.3g}x lower)" if best["val_loss"] < base
                       else " -- not beaten")
        lines.append(f"memoryless baseline: {base:.4f}{verdict}")
    ms = summary.get("ms_per_batch")
    lines.append(f"time:               {_fmt(ms, '.3g')} ms per batch, {summary['elapsed_s']:.1f} s in all")
    if summary.get("note"):
        lines.append(f"note:               {summary['note']}")
    if summary.get("run_dir"):
        lines.append(f"run folder:         {summary['run_dir']}")
    return "\n".join(lines)


def format_comparison(summaries: dict) -> str:
    """A side-by-side table of TP and BPTT summaries."""
    names = list(summaries)
    rows = [
        ("best validation loss", lambda s: _fmt(s["best"]["val_loss"])),
        ("  at batch", lambda s: _fmt(s["best"]["val_loss_batch"], "d")),
        ("best sequence accuracy", lambda s: _pct(s["best"]["seq_acc"])),
        ("final validation loss", lambda s: _fmt((s.get("final") or {}).get("val_loss"))),
        ("final sequence accuracy", lambda s: _pct((s.get("final") or {}).get("seq_acc"))),
        ("final spectral radius W_h", lambda s: _fmt((s.get("final") or {}).get("spectral_radius_W_h"))),
        ("ms per batch", lambda s: _fmt(s.get("ms_per_batch"), ".3g")),
        ("status", lambda s: s["status"]),
    ]
    width = max(len(r[0]) for r in rows) + 2
    col = max(12, *(len(n) + 2 for n in names))
    out = [" " * width + "".join(n.upper().rjust(col) for n in names)]
    for label, fn in rows:
        out.append(label.ljust(width) + "".join(fn(summaries[n]).rjust(col) for n in names))
    base = next((s.get("baseline_loss") for s in summaries.values() if s.get("baseline_loss") is not None), None)
    if base is not None:
        out.append("memoryless baseline".ljust(width) + f"{base:.4f}".rjust(col))
    return "\n".join(out)


def _exit_code(summary: dict) -> int:
    if summary["status"] == "completed":
        return EXIT_OK
    if summary["status"] == "aborted" and str(summary.get("reason", "")).startswith("interrupted"):
        return EXIT_INTERRUPTED
    return EXIT_STOPPED


# ---------------------------------------------------------------------- commands
def cmd_train(args) -> int:
    from .train.trainer import Trainer, new_run_dir

    if args.resume:
        # display options (--no-plots, --progress, --quiet, --threads) are welcome: they change no result
        if args.config or _config_overrides(args):
            raise _UsageError("--resume continues a run with its recorded configuration; "
                              "give no CONFIG, --set or named flags with it (display options are fine)")
        trainer = Trainer.resume(args.resume, callbacks=[_progress(args, "")])
        trainer.callbacks[0].label = trainer.config.method.name
        if args.no_plots:
            trainer.draw_plots = False
    else:
        config = _resolve(args)
        folder = new_run_dir(config)
        try:
            trainer = Trainer(config, folder, callbacks=[_progress(args, config.method.name)])
        except TPGraphError:  # refused (e.g. too large for the memory): leave no empty run folder behind
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
            raise
    summary = trainer.run()
    print(format_summary(summary))
    if summary["status"] == "aborted" and str(summary.get("reason", "")).startswith("interrupted"):
        print(f"continue with:      tpgraph train --resume {summary['run_dir']}")
    return _exit_code(summary)


def cmd_compare(args) -> int:
    from .plots import plot_loss, plot_overview, plot_spectral_radius
    from .train.checkpoint import checkpoint_info
    from .train.config import apply_overrides, load_config
    from .train.records import atomic_write_json, read_summary
    from .train.trainer import Trainer, new_run_dir

    if args.resume:
        if args.config or _config_overrides(args) or args.bptt_sets:
            raise _UsageError("--resume continues a comparison with its recorded configurations; "
                              "give no CONFIG or overrides with it (display options are fine)")
        root = Path(args.resume)
        if not (root / "tp" / "config.toml").is_file() or not (root / "bptt" / "config.toml").is_file():
            raise _UsageError(f"{str(root)!r} is not a comparison folder (no tp/ and bptt/ configurations)")
        configs = {m: load_config(root / m / "config.toml") for m in ("tp", "bptt")}
    else:
        base = _resolve(args)
        configs = {"tp": base.with_method("tp"),
                   "bptt": apply_overrides(base.with_method("bptt"), args.bptt_sets)}
        if configs["bptt"].method.name != "bptt":
            raise _UsageError("--bptt-set cannot change method.name")
        root = new_run_dir(base, label="compare")
        for m, cfg in configs.items():  # both configurations are on disk before any training
            _write_config(cfg, root / m)
    summaries = {}
    for method, cfg in configs.items():
        folder = root / method
        progress = _progress(args, method)
        status = None
        if (folder / "summary.json").exists():
            status = read_summary(folder).get("status")
        if status in ("completed", "diverged") or (status == "aborted" and not _resumable(folder, checkpoint_info)):
            summaries[method] = read_summary(folder)
            continue
        if _resumable(folder, checkpoint_info):
            trainer = Trainer.resume(folder, callbacks=[progress])
        else:
            trainer = Trainer(cfg, folder, callbacks=[progress])
        if args.no_plots:
            trainer.draw_plots = False
        summaries[method] = trainer.run()
        if _exit_code(summaries[method]) == EXIT_INTERRUPTED:
            print(format_summary(summaries[method]))
            print(f"continue with:      tpgraph compare --resume {root}")
            return EXIT_INTERRUPTED
    runs = [root / m for m in configs]
    plots = []
    if all(c.output.plots for c in configs.values()) and not args.no_plots:
        plots = [plot_overview(runs, root / "overview.png"), plot_loss(runs, root / "loss.png"),
                 plot_spectral_radius(runs, root / "spectral_radius.png")]
    atomic_write_json(root / "comparison.json", {"runs": {m: str(root / m) for m in configs},
                                                 "summaries": summaries, "plots": [p.name for p in plots]})
    print(format_comparison(summaries))
    print(f"comparison folder: {root}")
    return max(_exit_code(s) for s in summaries.values())


def _write_config(config, folder: Path) -> None:
    from .train.config import to_toml
    from .train.records import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "config.toml", to_toml(config, header="The resolved configuration of this run."))


def _resumable(folder: Path, checkpoint_info) -> bool:
    try:
        return bool(checkpoint_info(folder / "checkpoint")["state"].get("resumable"))
    except TPGraphError:
        return False


def cmd_plot(args) -> int:
    from .plots import plot_loss, plot_overview, plot_spectral_radius

    draw = {"overview": plot_overview, "loss": plot_loss, "spectral": plot_spectral_radius}[args.kind]
    path = draw(args.runs, args.output, title=args.title)
    print(path)
    return EXIT_OK


def cmd_config(args) -> int:
    from .train.config import describe_keys, to_toml

    if args.keys:
        print(describe_keys())
        return EXIT_OK
    print(to_toml(_resolve(args)), end="")
    return EXIT_OK


def _study_progress(args) -> str:
    return "off" if args.quiet else args.progress


def cmd_sweep(args) -> int:
    from .studies import Study, StudyProgress, format_table, load_spec, make_executor, write_report

    what = args.what
    if what[0] in ("report", "resume"):
        if len(what) != 2:
            raise _UsageError(f"usage: tpgraph sweep {what[0]} STUDY_FOLDER")
        study = Study.open(what[1])
        if what[0] == "report":
            rep = write_report(study, top=args.top)
            if args.all_trials:
                from .studies.report import trial_table
                print(format_table(trial_table(study)))
                print()
            print(format_table(rep["rows"]))
            print(f"report: {study.folder / 'report'} ({len(rep['files'])} files)")
            return EXIT_OK
    else:
        if len(what) != 1:
            raise _UsageError("give one study spec (TOML), or: tpgraph sweep report STUDY")
        spec = load_spec(what[0])
        study = Study(spec, args.out or Path("studies") / spec.name, storage=args.storage)
    executor = make_executor(args.scheduler, args.workers)
    try:
        mode = _study_progress(args)
        if executor.dashboard:
            print(f"Dask dashboard: {executor.dashboard}", file=sys.stderr)
        print(f"study {study.spec.name}: {study.folder} (storage {study.storage_url}; "
              f"browse it with: optuna-dashboard {study.storage_url})", file=sys.stderr)
        events = (lambda line: print(line, file=sys.stderr)) if mode == "lines" else None
        result = study.run(executor, progress=StudyProgress("off" if mode == "lines" else mode), on_event=events)
    finally:
        executor.close()
    from .studies.report import study_table
    print(format_table(study_table(study)))
    print(f"study folder: {study.folder} ({result.elapsed_s:.0f} s); report: tpgraph sweep report {study.folder}")
    return EXIT_OK


def cmd_reproduce(args) -> int:
    from .studies.reproduce import budget_from, reproduce

    budget = budget_from(args.budget, trials=args.trials, batches=args.batches, val_batches=args.val_batches,
                         final_batches=args.final_batches, final_seeds=args.final_seeds)
    ranges = {}
    for item in args.ranges:
        key, _, text = item.partition("=")
        try:
            low, high = (float(x) for x in text.split(":"))
        except ValueError:
            raise _UsageError(f"--range takes KEY=LOW:HIGH (e.g. optimizer.lr_y=1e-4:1), got {item!r}") from None
        ranges[key.strip()] = (low, high)
    out = args.out or Path("studies") / f"{args.table}-{args.budget}"
    command = "tpgraph " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["reproduce"] else ""
    res = reproduce(args.table, out, budget, scheduler=args.scheduler, workers=args.workers, storage=args.storage,
                    progress=_study_progress(args), values=tuple(args.only) if args.only else None,
                    ranges=ranges, command=command, say=lambda line: print(line, file=sys.stderr))
    print(Path(res["files"]["md"]).read_text(encoding="utf-8"))
    print("files: " + ", ".join(str(p) for p in res["files"].values()))
    return EXIT_OK


def cmd_research(args) -> int:
    from .studies.research import RESEARCH_BUDGETS, TASKS, VARIANTS, run_variant, write_table

    budget = RESEARCH_BUDGETS[args.budget]
    if args.folder is None:
        args.folder = "studies/research" if budget.name == "research" else f"studies/research-{budget.name}"
    if args.action == "list":
        for v in VARIANTS.values():
            keys = ", ".join(f"{k}={val!r}" for k, val in v.overrides.items()) or "-"
            print(f"{v.name:18s} {v.method:5s} {keys:55s} {v.description}")
        return EXIT_OK
    if args.action == "table":
        command = "tpgraph " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["research"] else ""
        res = write_table(args.folder, args.out, budget, command=command, keep=not args.fresh)
        if res["kept"]:
            print(f"{len(res['kept'])} rows kept from {Path(args.out) / 'research.json'} (cells with no study in "
                  f"{args.folder}; --fresh to drop them)", file=sys.stderr)
        print(f"{len(res['rows'])} rows; files: " + ", ".join(str(p) for p in res["files"].values()))
        return EXIT_OK
    if not args.variants:
        raise _UsageError(f"research {args.action}: name the variants (see 'tpgraph research list')")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise _UsageError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    if args.action == "inspect":
        from .studies.research import write_inspection

        cells = [(v, task, T) for v in args.variants for task in (args.tasks or list(TASKS))
                 for T in TASKS[task].values if not args.only or T in args.only]
        command = "tpgraph " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["research"] else ""
        res = write_inspection(args.folder, args.out, cells, command=command, budget=budget.name, keep=not args.fresh,
                               say=lambda line: print(line, file=sys.stderr))
        print(f"{len(res['cells'])} cells inspected; files: " + ", ".join(str(p) for p in res["files"].values()))
        return EXIT_OK
    for v in args.variants:
        for task in args.tasks or list(TASKS):
            values = tuple(t for t in TASKS[task].values if not args.only or t in args.only)
            if not values or (not args.tasks and not VARIANTS[v].applies_to(task)):
                continue  # a variant for some tasks runs on those unless --task names another (then refused)
            res = run_variant(v, task, args.folder, budget, values=values, scheduler=args.scheduler,
                              workers=args.workers, progress=_study_progress(args),
                              say=lambda line: print(line, file=sys.stderr))
            print(f"{v} / {task}: done in {res['wall_s']:.0f} s ({res['folder']})", file=sys.stderr)
    return EXIT_OK


COMMANDS = {"train": cmd_train, "compare": cmd_compare, "plot": cmd_plot, "config": cmd_config,
            "sweep": cmd_sweep, "reproduce": cmd_reproduce, "research": cmd_research}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tpgraph`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        if args.command in ("train", "compare"):
            _setup_threads(args)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("tpgraph: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TPGraphError as exc:
        if debug:
            raise
        print(f"tpgraph: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        if debug:
            raise
        where = f" {exc.filename!r}" if getattr(exc, "filename", None) else ""
        print(f"tpgraph: error: cannot access{where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
