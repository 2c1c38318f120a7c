"""TP's sensitivity on the GRU (seed 0, 6000 batches): the defaults with alignment angles, alpha 0.1 and 3, lr_f 1e-4.

Run from the repository root: ``python docs/results/gru_copy_memory/probe.py`` (one JSON line per setting).
"""
import json
import sys
import time

sys.path.insert(0, "examples")
import gru_copy_memory as m  # noqa: E402

configs = [dict(angles=True), dict(alpha=0.1), dict(alpha=3.0), dict(lr_f=1e-4)]
for extra in configs:
    t = time.perf_counter()
    out = m.main(delay=5, batches=6000, every=1000, seed=0, val_batches=25, methods=("tp",), quiet=True, **extra)
    print(json.dumps({"extra": extra, "wall_s": time.perf_counter() - t, "history": out}), flush=True)
