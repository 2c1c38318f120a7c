"""Cost of the study machinery: per-trial overhead, and throughput with 2 workers over 1.

    python benchmarks/bench_studies.py                 # about 3 minutes on 2 cores
    python benchmarks/bench_studies.py --trials 12 --batches 1500 --out benchmarks/studies.json

Three measurements on the same short trials (copy memory, delay 5, 128 hidden
units, one seed each, the paper's protocol scaled down to ``--batches``; the
trials' learning rates are fixed by enqueueing them, so every variant runs
exactly the same work):

``direct``      the trials as plain ``Trainer(config, run_dir).run()`` calls in a loop in
                this process (records written, no plots, as in a study; run before and after
                ``serial``, the mean taken);
``serial``      the same trials as a study run in this process (``scheduler="serial"``):
                asking the sampler, the SQLite storage, the pruner reports, the records;
``dask-1``, ``dask-2``   the same study on a LocalCluster of 1 and of 2 single-threaded
                worker processes (cluster start-up excluded, first-trial compile included
                on each worker: the Numba cache is warm).

Per-trial overhead = (study - fixed - direct) / direct, where *fixed* is what one session
of a study costs whatever its size (opening the Optuna studies, recovering, reading the
result; measured as a second ``run`` with nothing left to do). Cluster start-up and each
worker's first import and kernel load are measured apart (``cluster_start_s``): once per
worker, not per trial.
Scaling = (trials per hour with 2 workers) / (with 1 worker).
The machine should be otherwise idle: the scaling figure is meaningless while
other work uses the cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

for _k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_k, "1")


def spec_data(trials: int, batches: int) -> dict:
    return {"study": {"name": "bench", "trials": trials, "seeds": 1, "sampler": "random", "pruner": "none"},
            "base": {"task": {"delay": 5}, "model": {"n_hidden": 128},
                     "protocol": {"n_batches": batches, "warmup": batches // 5, "val_batches": 20,
                                  "val_every": 250},
                     "output": {"checkpoint_every": 1000}},
            "space": {"optimizer.lr_f": {"type": "log_uniform", "low": 1e-4, "high": 1e-3}}}


def lrs(trials: int) -> list[float]:
    return [1e-4 * (10 ** (i / max(1, trials - 1))) for i in range(trials)]


def run_direct(spec, folder: Path, trials: int) -> float:
    from tpgraph.train import Trainer

    t0 = time.perf_counter()
    from tpgraph.train import apply_overrides

    for i, lr in enumerate(lrs(trials)):
        # the same run a study trial makes: records and checkpoints, no plots (the study draws none)
        cfg = apply_overrides(spec.config_for({}, {"optimizer.lr_f": lr}, seed=0), ["output.plots=false"])
        Trainer(cfg, folder / f"direct-{i}").run()
    return time.perf_counter() - t0


def run_study(spec, folder: Path, trials: int, executor) -> tuple[float, float]:
    """Seconds of ``Study.run`` over the trials, and of a second ``run`` with nothing left (the fixed cost)."""
    from tpgraph.studies import Study

    study = Study(spec, folder)
    g = study.optuna_studies()[0]
    for lr in lrs(trials):
        g.study.enqueue_trial({"optimizer.lr_f": lr})
    t0 = time.perf_counter()
    study.run(executor)
    t1 = time.perf_counter()
    study.run(executor)  # opens the studies, recovers nothing, runs nothing, reads the result
    return t1 - t0, time.perf_counter() - t1


def import_optuna() -> None:
    """Optuna imports its submodules lazily (about 0.5 s at first use): a one-time cost per process."""
    import optuna

    for name in ("samplers", "pruners", "storages", "trial", "study"):
        getattr(optuna, name)
    optuna.samplers.RandomSampler()
    optuna.pruners.NopPruner()


def warm_worker() -> int:
    """Import tpgraph and Optuna and load the kernels on a worker (what its first trial would otherwise pay)."""
    import_optuna()
    from tpgraph.studies.trial import run_trial  # noqa: F401
    from tpgraph.train import Config, Trainer, apply_overrides

    cfg = apply_overrides(Config(), ["protocol.n_batches=20", "protocol.warmup=5", "protocol.val_batches=2"])
    Trainer(cfg).run()
    return os.getpid()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--batches", type=int, default=1500, help="batches per trial")
    ap.add_argument("--out", default=str(HERE / "studies.json"))
    args = ap.parse_args(argv)

    from tpgraph.provenance import machine
    from tpgraph.studies import SerialExecutor, make_executor, parse_spec
    from tpgraph.train import Trainer

    spec = parse_spec(spec_data(args.trials, args.batches))
    tmp = Path(tempfile.mkdtemp(prefix="bench-studies-"))
    try:
        Trainer(spec.config_for({}, {"optimizer.lr_f": 1e-4})).run()  # compile (or load) the kernels once
        import_optuna()
        times, fixed, start = {}, {}, {}
        # direct runs before and after the serial study (their mean is the reference), against drift
        first = run_direct(spec, tmp / "direct-a", args.trials)
        times["serial"], fixed["serial"] = run_study(spec, tmp / "serial", args.trials, SerialExecutor())
        second = run_direct(spec, tmp / "direct-b", args.trials)
        times["direct"] = (first + second) / 2
        print(f"direct: {first:.2f} s and {second:.2f} s; serial study: {times['serial']:.2f} s", file=sys.stderr)
        for n in (1, 2):
            t0 = time.perf_counter()
            ex = make_executor(None, workers=n)
            try:
                ex.client.run(warm_worker)  # start-up, imports and kernel loading: once per worker, not per trial
                start[f"dask-{n}"] = time.perf_counter() - t0
                times[f"dask-{n}"], fixed[f"dask-{n}"] = run_study(spec, tmp / f"dask-{n}", args.trials, ex)
            finally:
                ex.close()
            print(f"dask-{n}: {times[f'dask-{n}']:.2f} s (cluster start and warm-up {start[f'dask-{n}']:.1f} s)",
                  file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    per_hour = {k: 3600 * args.trials / v for k, v in times.items()}
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": "python benchmarks/bench_studies.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "trials": args.trials, "batches": args.batches, "seconds": times,
        "fixed_s_per_session": fixed, "cluster_start_s": start,
        "trial_s_direct": times["direct"] / args.trials,
        # per trial: what a study adds beyond its fixed cost per session (opening the studies, reading the result)
        "overhead_serial": (times["serial"] - fixed["serial"] - times["direct"]) / times["direct"],
        "overhead_dask_1": (times["dask-1"] - fixed["dask-1"] - times["direct"]) / times["direct"],
        "overhead_serial_with_fixed": (times["serial"] - times["direct"]) / times["direct"],
        "trials_per_hour": per_hour,
        "scaling_2_over_1": per_hour["dask-2"] / per_hour["dask-1"],
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"trial {result['trial_s_direct']:.2f} s direct; per-trial overhead serial "
          f"{100 * result['overhead_serial']:.2f}%, dask 1 worker {100 * result['overhead_dask_1']:.2f}% (goal < 2%); "
          f"fixed per session {fixed['serial']:.2f} s serial, {fixed['dask-1']:.2f} s dask; trials/hour 2 workers "
          f"/ 1 worker {result['scaling_2_over_1']:.2f} (goal >= 1.8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
