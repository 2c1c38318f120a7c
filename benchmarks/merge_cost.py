"""What a merge strategy and an alignment measurement cost, per training batch of the paper's SRN.

    python benchmarks/merge_cost.py                 # prints two Markdown tables (~1 min)
    python benchmarks/merge_cost.py --write-docs    # and puts them into docs/merges.md and docs/concepts.md

1. Merges: ms per training batch (L = 25, B = 20, 128 hidden units, float32,
   Adam, TP with DTP) with the linear merge, and with the same norm-clipped
   sum and the same ``1/(t+1)`` step weighting each written two ways: built in
   (compiled inside the scan, or fused as weights) and as a registered Python
   function called node by node.
2. Alignment: ms per :meth:`tpgraph.SRN.alignment` call against ms per
   training batch, for DTP and FA, at L = 25 and 45.

All variants are timed interleaved (round robin, 60 repeats, each sample the
time of one call, the figure the fastest sample: the steadier
estimate on a shared machine), with one BLAS thread, after warm-up calls that
compile everything.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tpgraph as tp  # noqa: E402


def clipped_python(h, proposals):
    """The built-in 'clipped' (max norm 1) as a Python merge: h + clip(sum of displacements)."""
    d = sum(p - h for p in proposals)
    n = np.linalg.norm(d, axis=1, keepdims=True)
    return h + d * np.minimum(1.0, 1.0 / np.maximum(n, 1e-30))


def weighted_step_python(h, proposals, node, sources):
    """The built-in 'weighted_step' as a Python merge."""
    t = int(node.split("_")[1]) if node.startswith("h_") else 0
    target = h.copy()
    for tau, src in zip(proposals, sources):
        target += (1.0 / (t + 1) if t and src.startswith("y_") else 1.0) * (tau - h)
    return target


def _interleaved(calls: dict, repeats: int = 60, inner: int = 1) -> dict:
    """ms per call of each callable: the fastest of ``repeats`` interleaved samples of ``inner`` calls.

    On a machine shared with other jobs the fastest sample is the steadier
    estimate of the uncontended cost (as in benchmarks/bench.py); medians
    there mostly measure the other jobs.
    """
    times = {k: [] for k in calls}
    for r in range(repeats):
        keys = list(calls)
        keys = keys[r % len(keys):] + keys[: r % len(keys)]  # rotate the order
        for k in keys:
            t0 = time.perf_counter()
            for _ in range(inner):
                calls[k]()
            times[k].append((time.perf_counter() - t0) / inner * 1e3)
    return {k: float(np.min(v)) for k, v in times.items()}


def merge_table(L: int = 25) -> str:
    tp.register_merge("clipped_python_bench", clipped_python, overwrite=True)
    tp.register_merge("weighted_step_python_bench", weighted_step_python, overwrite=True)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 10, (L, 20))
    names = ["linear", "clipped", "clipped_python_bench", "weighted_step", "weighted_step_python_bench"]
    models = {n: tp.SRN(10, 128, 10, seed=0, merge=n) for n in names}
    for m in models.values():
        for _ in range(5):
            m.train_step(x, x)
    ms = _interleaved({n: (lambda m=m: m.train_step(x, x)) for n, m in models.items()})
    label = {"linear": "linear (fused)", "clipped": "clipped, built in (compiled, inside the scan)",
             "clipped_python_bench": "clipped, as a Python merge",
             "weighted_step": "weighted_step, built in (fused weights)",
             "weighted_step_python_bench": "weighted_step, as a Python merge (node=, sources=)"}
    lines = ["| merge | ms per batch | vs linear |", "|---|---|---|"]
    for n in names:
        lines.append(f"| {label[n]} | {ms[n]:.2f} | {ms[n] / ms['linear']:.2f} |")
    return "\n".join(lines)


def alignment_table() -> str:
    lines = ["| SRN | ms per training batch | ms per alignment call | ratio |", "|---|---|---|---|"]
    for L in (25, 45):
        for credit in ("dtp", "fa"):
            m = tp.SRN(10, 128, 10, seed=0, credit=credit)
            x = np.random.default_rng(0).integers(0, 10, (L, 20))
            for _ in range(5):
                m.train_step(x, x)
                m.alignment(x, x)
            ms = _interleaved({"step": lambda: m.train_step(x, x), "align": lambda: m.alignment(x, x)})
            lines.append(f"| L = {L}, {credit} | {ms['step']:.2f} | {ms['align']:.2f} | "
                         f"{ms['align'] / ms['step']:.2f} |")
    return "\n".join(lines)


def provenance(wall: float) -> str:
    from tpgraph.provenance import cpu_model

    cpu = cpu_model()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"Measured with `python benchmarks/merge_cost.py` on "
            f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, {cpu}, {os.cpu_count()} cores "
            f"shared with other jobs (load average {load:.1f} at the end), Python {platform.python_version()}, "
            f"one BLAS thread, {wall:.0f} s; the fastest of 60 interleaved single calls.")


def _write(path: Path, marker: str, text: str) -> None:
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    doc = path.read_text()
    if begin not in doc or end not in doc:
        raise SystemExit(f"{path}: the markers {begin} and {end} are missing")
    head, rest = doc.split(begin, 1)
    path.write_text(head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write-docs", action="store_true", help="write the tables into docs/merges.md and concepts.md")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    merges = merge_table()
    align = alignment_table()
    note = provenance(time.perf_counter() - t0)
    print(merges, "\n\n", align, "\n\n", note, sep="")
    if args.write_docs:
        _write(ROOT / "docs" / "merges.md", "merge_speed", note + "\n\n" + merges)
        _write(ROOT / "docs" / "concepts.md", "alignment_cost", note + "\n\n" + align)


if __name__ == "__main__":
    main()
