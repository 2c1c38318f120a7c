"""A stacked two-layer SRN declared by hand with the Graph API, trained by DTP.

Per time step t = 1..L (h1_0 and h2_0 are data inputs held at zero):

    h1_t = tanh(W_x1 x_t  + W_11 h1_{t-1} + b_1)      layer 1, fed by the input
    h2_t = tanh(W_12 h1_t + W_22 h2_{t-1} + b_2)      layer 2, fed by layer 1
    y_t  = W_hy h2_t + b_y,   E_t = cross-entropy(y_t, label_t)

          y_t            y_{t+1}
           ^                ^
    h2_{t-1} --> h2_t --> h2_{t+1}
                  ^          ^
    h1_{t-1} --> h1_t --> h1_{t+1}
                  ^          ^
                 x_t       x_{t+1}

Three kinds of ``dtp`` edges, each with its own learned inverse:

* in time in layer 1, ``h1_{t-1} -> h1_t``: ``g = tanh(V_11 h1_t + W_x1 x_t + c_11)``;
* in time in layer 2, ``h2_{t-1} -> h2_t``: ``g = tanh(V_22 h2_t + W_12 h1_t + c_22)``;
* between the layers, ``h1_t -> h2_t``: ``g = tanh(V_12 h2_t + c_12)``.

So ``h2_t`` merges a proposal from its output ``y_t`` (a ``gradient``
edge: the step target) and one from the future ``h2_{t+1}``; ``h1_t``
merges one from above (``h2_t``) and one from the future (``h1_{t+1}``).
Nothing is special-cased: the engine sees a DAG, stacks each layer's steps
and runs each layer's recurrence as a scan. BPTT is
``graph.with_rules("gradient")`` from the same initialisation.

The task is copy memory (``tpgraph.tasks``). Run ``python examples/stacked_srn.py``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import tpgraph as tp
from tpgraph.tasks import make_task


def build_stacked_srn(length: int, n_in: int, n_hidden: int, n_out: int, noise: float = 0.0) -> tp.Graph:
    """Declare the two-layer SRN unrolled over ``length`` steps (equal layer widths)."""
    g = tp.Graph(f"stacked_srn_L{length}")
    g.input("h1_0", n_hidden)
    g.input("h2_0", n_hidden)
    for t in range(1, length + 1):
        g.index_input(f"x_{t}", n_in)
        g.dense(f"h1_{t}", [f"x_{t}", f"h1_{t - 1}"], n_hidden, act="tanh", weights=["W_x1", "W_11"], bias="b_1",
                rules=["none", "dtp"])
        g.add_inverse(f"h1_{t}", of=f"h1_{t - 1}", weight="V_11", bias="c_11", others="forward", noise=noise)
        g.dense(f"h2_{t}", [f"h1_{t}", f"h2_{t - 1}"], n_hidden, act="tanh", weights=["W_12", "W_22"], bias="b_2",
                rules=["dtp", "dtp"])
        g.add_inverse(f"h2_{t}", of=f"h2_{t - 1}", weight="V_22", bias="c_22", others="forward", noise=noise)
        g.add_inverse(f"h2_{t}", of=f"h1_{t}", weight="V_12", bias="c_12", others="none", noise=noise)
        g.softmax_output(f"y_{t}", [f"h2_{t}"], n_out, weights=["W_hy"], bias="b_y", rules=["gradient"])
        g.index_input(f"l_{t}", n_out)
        g.cross_entropy(f"E_{t}", f"y_{t}", f"l_{t}")
    for group in ("W_11", "W_22", "V_11", "V_22", "V_12"):
        g.init(group, "orthogonal")
    for group in ("W_x1", "W_12", "W_hy"):
        g.init(group, "normal:0.1")
    return g


def make_engine(graph: tp.Graph, params: tp.ParamStore, alpha: float, lr: float, seed: int) -> tp.Engine:
    """Adam for every group; the output layer follows the plain gradient (scale 1/alpha)."""
    out = {"scale": 1.0 / alpha}
    return tp.Engine(graph, params, alpha=alpha, optimizer="adam", lr=lr, seed=seed,
                     groups={"W_hy": out, "b_y": out})


def main(batches: int = 1500, delay: int = 2, n_memorise: int = 3, n_hidden: int = 32, batch_size: int = 20,
         warmup: int = 100, every: int = 250, alpha: float = 1.0, lr: float = 2e-3, seed: int = 0,
         method: str = "tp", quiet: bool = False) -> list[float]:
    """Train on copy memory and return the validation loss (per step) at each report.

    ``method="tp"`` trains with the graph's ``dtp`` edges (after ``warmup``
    inverse-only batches); ``"bptt"`` with every edge ``gradient``, from the
    same initialisation and batches.
    """
    task = make_task("copy_memory", delay=delay, n_memorise=n_memorise)
    L = task.length
    graph = build_stacked_srn(L, task.n_in, n_hidden, task.n_out, noise=0.0)
    params = graph.init_params(seed)  # the same initialisation for both methods
    if method == "bptt":
        graph, alpha, warmup = graph.with_rules("gradient"), 1.0, 0
    elif method != "tp":
        raise ValueError(f"method must be 'tp' or 'bptt', got {method!r}")
    engine = make_engine(graph, params, alpha, lr, seed)
    if not quiet:
        print(graph, "\n" + engine.plan.describe())

    def batch_of(x, y):
        B = x.shape[1]
        zeros = np.zeros((1, B, n_hidden), dtype=np.float32)
        return {("h1_0",): zeros, ("h2_0",): zeros, tuple(f"x_{t}" for t in range(1, L + 1)): x,
                tuple(f"l_{t}" for t in range(1, L + 1)): y}

    xv, yv = task.batch(np.random.default_rng(seed + 1), 200)
    val = batch_of(xv, yv)
    rng = np.random.default_rng(seed)
    history = []
    t0 = time.perf_counter()
    for step in range(0, batches + 1):
        if step > 0:
            engine.step(batch_of(*task.batch(rng, batch_size)), update_forward=step > warmup)
        if step % every == 0 or step == batches:
            loss = engine.forward(val).loss / L
            history.append(loss)
            if not quiet:
                received = engine.proposals("h1_1") if step > warmup else {}
                print(f"[{method}] batch {step:5d}  validation loss {loss:.4f}  (baseline {task.baseline_loss:.4f})  "
                      f"h1_1 receives proposals from {sorted(received)}  {time.perf_counter() - t0:.1f} s")
    return history


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=1500)
    ap.add_argument("--method", choices=("tp", "bptt"), default="tp")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    main(args.batches, method=args.method, seed=args.seed)
