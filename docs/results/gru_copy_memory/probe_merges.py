"""Full TP on the GRU (dtp on all three dense edges) with the mean and the clipped merge: seed 0, 6000 batches.

The same initialisation, batches and validation set as measure.py's seed 0. Run from the repository root:
``python docs/results/gru_copy_memory/probe_merges.py`` (one JSON line per merge).
"""
import json
import sys
import time

sys.path.insert(0, "examples")
import numpy as np  # noqa: E402

import gru_copy_memory as m  # noqa: E402
from tpgraph.tasks import make_task  # noqa: E402

task = make_task("copy_memory", delay=5)
L, n, B, seed, batches = task.length, 64, 20, 0, 6000
xv, yv = task.validation_set(seed + 1, 25, B)
h0 = np.zeros((1, B, n), dtype=np.float32)
for merge in ("mean", "clipped"):
    g = m.build_gru(L, task.n_in, n, task.n_out, method="tp")
    g.merge = merge
    eng = m.make_engine(g, g.init_params(seed), alpha=1.0, lr_f=1e-3, lr_g=1e-3, lr_y=3e-3, seed=seed)
    rng = np.random.default_rng(seed)
    t0, history = time.perf_counter(), []
    for b in range(batches + 1):
        if b > 0:
            x, y = task.batch(rng, B)
            eng.step(m._batch(task, L, x, y, h0), update_forward=b > 200)
        if b % 1000 == 0:
            ev = m.evaluate(eng, task, xv, yv, h0)
            history.append({"batch": b, "loss": ev["loss"], "acc": ev["seq_acc"]})
    print(json.dumps({"merge": merge, "wall_s": time.perf_counter() - t0, "history": history}), flush=True)
