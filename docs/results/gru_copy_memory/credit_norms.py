"""Where TP's credit into the GRU state comes from: per consumer, the norm of its proposal's displacement to h_t.

Train TP (defaults of examples/gru_copy_memory.py, seed 0) for N batches, then on one validation
batch average ||tau - h|| over t for each consumer of h_{t-1} (z_t, r_t, rh_t, nh_t, h_t), for TP and
for the gradient rules on the same parameters (alpha = the TP engine's, so the loss targets are equal).

Run from the repository root: ``python docs/results/gru_copy_memory/credit_norms.py 4000``.
"""
import json
import sys

sys.path.insert(0, "examples")
import numpy as np  # noqa: E402

import gru_copy_memory as m  # noqa: E402
import tpgraph as tp  # noqa: E402
from tpgraph.tasks import make_task  # noqa: E402

N = int(sys.argv[1])
task = make_task("copy_memory", delay=5)
L = task.length
g = m.build_gru(L, task.n_in, 64, task.n_out, method="tp")
eng = m.make_engine(g, g.init_params(0), alpha=1.0, lr_f=1e-3, lr_g=1e-3, lr_y=3e-3, seed=0)
bp = tp.Engine(g.with_rules("gradient"), eng.params, alpha=1.0, seed=0)
rng = np.random.default_rng(0)
h0 = np.zeros((1, 20, 64), dtype=np.float32)
xv, yv = task.validation_set(1, 1, 20)
batch_v = m._batch(task, L, xv[0], yv[0], h0)
out = {}
for b in range(N + 1):
    if b in (0, 200, N // 2, N):
        res = {}
        for name, e in (("tp", eng), ("gradient", bp)):
            e.step(batch_v, apply=False, update_inverse=False)
            acc = {}
            for t in range(2, L + 1):
                h = e.value(f"h_{t - 1}")
                for consumer, tau in e.proposals(f"h_{t - 1}").items():
                    key = consumer.rsplit("_", 1)[0]
                    acc.setdefault(key, []).append(float(np.linalg.norm(tau - h)))
            res[name] = {k: float(np.mean(v)) for k, v in acc.items()}
        out[b] = res
        print(b, json.dumps(res), flush=True)
    if b < N:
        x, y = task.batch(rng, 20)
        eng.step(m._batch(task, L, x, y, h0), update_forward=b >= 200)
