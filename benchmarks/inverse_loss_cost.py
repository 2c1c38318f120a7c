"""What the inverse's objective costs, per training batch of the paper's SRN.

    python benchmarks/inverse_loss_cost.py          # a Markdown table on stdout (~1 min)

ms per training batch (sequence expansion's shape: L = 30, B = 20, 5 tokens, 128 hidden units, float32, Adam,
TP with DTP and denoising noise 0.1) with each inverse loss of :data:`tpgraph.nodes.INVERSE_LOSSES` for the learned
inverse, the Jacobian loss for the adjoint inverse (:class:`tpgraph.inverses.AdjointInverse`), and the ratio
to the reconstruction loss measured in the same run. The variants are timed interleaved (round robin, each
sample the time of one batch, the figure the fastest sample: the steadier estimate on a shared machine), with
one BLAS thread, after warm-up batches that compile everything.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tpgraph.models.srn import SRN  # noqa: E402
from tpgraph.nodes import INVERSE_LOSSES  # noqa: E402
from tpgraph.provenance import machine  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200, help="samples per loss (default 200)")
    ap.add_argument("--length", type=int, default=30, help="sequence length L (default 30)")
    args = ap.parse_args(argv)
    L, B, H, V = args.length, 20, 128, 5
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, V, (L, B)), rng.integers(0, V, (L, B))
    models = {f"`{loss}`": SRN(V, H, V, noise_sigma=0.1, inverse_loss=loss, seed=1) for loss in INVERSE_LOSSES}
    models["`jacobian`, adjoint inverse"] = SRN(V, H, V, noise_sigma=0.1, inverse_loss="jacobian", inverse="adjoint",
                                                seed=1)
    for m in models.values():
        for _ in range(5):
            m.train_step(x, y)
    samples = {loss: [] for loss in models}
    for r in range(args.repeats):
        order = list(models)[r % len(models):] + list(models)[:r % len(models)]
        for loss in order:
            t0 = time.perf_counter()
            models[loss].train_step(x, y)
            samples[loss].append(time.perf_counter() - t0)
    best = {loss: 1e3 * min(s) for loss, s in samples.items()}
    print(f"`python benchmarks/inverse_loss_cost.py --repeats {args.repeats} --length {L}` on {machine()}, "
          f"{datetime.now(timezone.utc):%Y-%m-%d}: ms per training batch (fastest of "
          f"{args.repeats} interleaved samples), L = {L}, B = {B}, {H} hidden units, float32, noise 0.1.\n")
    print("| inverse loss | ms / batch | ratio to reconstruction |")
    print("|---|---|---|")
    for loss in models:
        print(f"| {loss} | {best[loss]:.3f} | {best[loss] / best['`reconstruction`']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
