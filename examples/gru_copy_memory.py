"""A gated recurrent cell (GRU) on copy memory, trained with target propagation and with BPTT.

The cell, per step ``t`` (``sigma`` the sigmoid, ``*`` the elementwise product)::

    z_t  = sigma(W_zx x_t + W_zh h_{t-1} + b_z)          update gate   (dense)
    r_t  = sigma(W_rx x_t + W_rh h_{t-1} + b_r)          reset gate    (dense)
    rh_t = r_t * h_{t-1}                                               (multiply)
    c_t  = tanh(W_cx x_t + W_ch rh_t + b_c)              candidate     (dense)
    e_t  = c_t + (-1) h_{t-1}                                          (scale, add)
    h_t  = h_{t-1} + z_t * e_t  = (1 - z_t) h_{t-1} + z_t c_t          (multiply, add)
    y_t  = softmax(W_hy h_t + b_y),  E_t = cross-entropy(y_t, label_t)

declared node by node with the Graph API: dense nodes for the gates and the
candidate, and the parameter-free kinds ``multiply``, ``scale`` and ``add``
for the gating. Target propagation (``method="tp"``): the three dense edges
back into the recurrent state (``h_{t-1} -> z_t``, ``h_{t-1} -> r_t``,
``rh_t -> c_t``) are ``dtp`` with learned inverses ``g(z_t) ~ h_{t-1}``
(groups ``V_z, c_z``), ``g(r_t) ~ h_{t-1}`` (``V_r, c_r``) and
``g(c_t) ~ rh_t`` (``V_c, c_c``), each using the node's input weight for
``x_t`` (``others="forward"``, as the paper's ``G``); the product, scale and
sum edges are ``gradient`` (their local Jacobians are diagonal). BPTT
(``method="bptt"``) is the same graph with every edge ``gradient``
(``graph.with_rules("gradient")``) and ``alpha = 1``, from the same
initialisation, on the same batches.

Run ``python examples/gru_copy_memory.py --delay 5 --batches 12000``; the
measured comparison is in ``docs/results/gru_copy_memory.md``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import tpgraph as tp
from tpgraph.alignment import alignment, reference_engine
from tpgraph.tasks import make_task

#: The cell's forward parameter groups (input, recurrent and bias of each dense node) and the output layer.
GATES = ("z", "r", "c")
OUTPUT_GROUPS = ("W_hy", "b_y")


def build_gru(length: int, n_in: int, n_hidden: int, n_out: int, *, method: str = "tp", gates: str = "dtp",
              noise: float = 0.0, dtype="float32") -> tp.Graph:
    """Declare the GRU unrolled over ``length`` steps (one-hot inputs ``x_t``, softmax outputs ``y_t``).

    ``method="tp"`` puts ``dtp`` on the dense edges into the recurrent state
    and attaches their inverses; ``"bptt"`` is the same graph (the same
    forward groups; the inverses left out) with every credit edge
    ``gradient``. ``gates="gradient"`` (with ``method="tp"``) keeps ``dtp``
    only on the candidate's edge ``rh_t -> c_t`` and gives the gates' edges
    ``h_{t-1} -> z_t, r_t`` the gradient rule (no gate inverses).
    """
    if method not in ("tp", "bptt"):
        raise tp.ConfigError(f"GRU: method must be 'tp' or 'bptt', got {method!r}")
    if gates not in ("dtp", "gradient"):
        raise tp.ConfigError(f"GRU: gates must be 'dtp' or 'gradient', got {gates!r}")
    g = tp.Graph(f"gru_L{length}", dtype=dtype)
    g.input("h_0", n_hidden)
    credit = "dtp" if method == "tp" else "gradient"
    gate_credit = gates if method == "tp" else "gradient"
    inverted = [gate for gate, rule in (("z", gate_credit), ("r", gate_credit), ("c", credit)) if rule == "dtp"]
    for t in range(1, length + 1):
        x, h_prev, h = f"x_{t}", f"h_{t - 1}", f"h_{t}"
        g.index_input(x, n_in)
        for gate, act, rec in (("z", "sigmoid", h_prev), ("r", "sigmoid", h_prev)):
            g.dense(f"{gate}_{t}", [x, rec], n_hidden, act=act, weights=[f"W_{gate}x", f"W_{gate}h"],
                    bias=f"b_{gate}", rules=["none", gate_credit])
        g.multiply(f"rh_{t}", [f"r_{t}", h_prev])
        g.dense(f"c_{t}", [x, f"rh_{t}"], n_hidden, act="tanh", weights=["W_cx", "W_ch"], bias="b_c",
                rules=["none", credit])
        for gate, of in (("z", h_prev), ("r", h_prev), ("c", f"rh_{t}")):
            if gate in inverted:
                g.add_inverse(f"{gate}_{t}", of=of, weight=f"V_{gate}", bias=f"c_{gate}", act="tanh",
                              others="forward", noise=noise)
        g.scale(f"nh_{t}", h_prev, -1.0)
        g.add_node(f"e_{t}", [f"c_{t}", f"nh_{t}"])
        g.multiply(f"u_{t}", [f"z_{t}", f"e_{t}"])
        g.add_node(h, [h_prev, f"u_{t}"])
        g.softmax_output(f"y_{t}", [h], n_out, weights=["W_hy"], bias="b_y", rules=["gradient"])
        g.index_input(f"l_{t}", n_out)
        g.cross_entropy(f"E_{t}", f"y_{t}", f"l_{t}")
    for gate in GATES:
        g.init(f"W_{gate}x", "normal:0.1")
        g.init(f"W_{gate}h", "orthogonal")
        if gate in inverted:
            g.init(f"V_{gate}", "orthogonal")
    g.init("W_hy", "normal:0.1")
    return g


def make_engine(graph: tp.Graph, params: tp.ParamStore, *, alpha: float, lr_f: float, lr_g: float, lr_y: float,
                seed: int) -> tp.Engine:
    """Adam on every group; the output layer's gradient scaled by ``1/alpha`` (it follows the plain gradient)."""
    groups = {grp: {"lr": lr_g} for grp in graph.param_shapes() if grp.startswith(("V_", "c_"))}
    groups.update({grp: {"lr": lr_y, "scale": 1.0 / alpha} for grp in OUTPUT_GROUPS})
    return tp.Engine(graph, params, alpha=alpha, optimizer="adam", lr=lr_f, groups=groups, seed=seed)


def params_for(graph: tp.Graph, init: tp.ParamStore) -> tp.ParamStore:
    """The groups of ``init`` that ``graph`` uses (copied): the BPTT graph and ``gates="gradient"`` have fewer."""
    return tp.ParamStore({grp: init[grp].copy() for grp in graph.param_shapes()}, graph.dtype)


def _batch(task, L, x, y, h0):
    return {("h_0",): h0, tuple(f"x_{t}" for t in range(1, L + 1)): x,
            tuple(f"l_{t}" for t in range(1, L + 1)): y}


def evaluate(eng: tp.Engine, task, xv, yv, h0) -> dict:
    """Mean per-step cross-entropy and whole-sequence accuracy over a fixed validation set."""
    L = task.length
    losses, right, total = [], 0, 0
    names = [f"y_{t}" for t in range(1, L + 1)]
    for x, y in zip(xv, yv):
        res = eng.forward(_batch(task, L, x, y, h0))
        losses.append(res.loss / L)
        pred = np.stack([eng.value(n).argmax(axis=1) for n in names])
        right += int(np.sum(np.all(pred == y, axis=0)))
        total += y.shape[1]
    return {"loss": float(np.mean(losses)), "seq_acc": right / total}


def main(delay: int = 5, n_memorise: int = 10, batches: int = 3000, n_hidden: int = 64, batch_size: int = 20,
         warmup: int = 200, every: int = 500, alpha: float = 1.0, lr_f: float = 1e-3, lr_g: float = 1e-3,
         lr_y: float = 3e-3, seed: int = 0, val_batches: int = 10, methods: tuple[str, ...] = ("tp", "bptt"),
         gates: str = "dtp", angles: bool = False, quiet: bool = False) -> dict[str, list[dict]]:
    """Train the GRU on copy memory with each method; per method, the validation results at each report.

    Each result is ``{"batch", "loss", "acc", "seconds"}`` (mean per-step
    cross-entropy on a fixed validation set, the fraction of whole sequences
    right, wall time since the method started). Batch 0 is the shared
    initialisation. ``gates`` is the TP rule of the gates' edges into the
    state (see :func:`build_gru`). TP trains its inverses alone for the first ``warmup``
    batches (the paper's inverse-only warm-up). With ``angles``, TP's reports
    also hold ``"angles"``: per forward group, the angle in degrees between
    its local update and the BPTT gradient on the first validation batch
    (:mod:`tpgraph.alignment`; 0 would be backpropagation's direction).
    """
    task = make_task("copy_memory", delay=delay, n_memorise=n_memorise)
    L = task.length
    xv, yv = task.validation_set(seed + 1, val_batches, batch_size)
    graphs = {"tp": build_gru(L, task.n_in, n_hidden, task.n_out, method="tp", gates=gates)}
    graphs["bptt"] = build_gru(L, task.n_in, n_hidden, task.n_out, method="bptt")
    # one initialisation, of the graph with every inverse: each run takes the groups it uses
    init = build_gru(L, task.n_in, n_hidden, task.n_out, method="tp").init_params(seed)
    h0 = np.zeros((1, batch_size, n_hidden), dtype=graphs["tp"].dtype)
    out = {}
    for method in methods:
        graph = graphs[method]
        params = params_for(graph, init)
        eng = make_engine(graph, params, alpha=alpha if method == "tp" else 1.0, lr_f=lr_f, lr_g=lr_g,
                          lr_y=lr_y, seed=seed)
        rng = np.random.default_rng(seed)  # the same batches for every method
        reference = reference_engine(eng) if angles and method == "tp" else None
        history = []
        t0 = time.perf_counter()
        for b in range(batches + 1):
            if b > 0:
                x, y = task.batch(rng, batch_size)
                eng.step(_batch(task, L, x, y, h0), update_forward=method == "bptt" or b > warmup)
            if b % every == 0 or b == batches:
                ev = evaluate(eng, task, xv, yv, h0)
                history.append({"batch": b, "loss": ev["loss"], "acc": ev["seq_acc"],
                                "seconds": time.perf_counter() - t0})
                if reference is not None:
                    al = alignment(eng, _batch(task, L, xv[0], yv[0], h0), reference)
                    history[-1]["angles"] = dict(al.groups)
                if not quiet:
                    angle = "".join(f"  {grp} {history[-1]['angles'][grp]:.0f} deg" for grp in ("W_zh", "W_rh", "W_ch")
                                    if "angles" in history[-1])
                    print(f"[{method}] copy memory T={delay} batch {b:5d}  validation loss {ev['loss']:.5f} "
                          f"(baseline {task.baseline_loss:.4f})  sequences right {ev['seq_acc']:.3f}  "
                          f"{time.perf_counter() - t0:.1f} s{angle}", flush=True)
        out[method] = history
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delay", type=int, default=5)
    ap.add_argument("--batches", type=int, default=3000)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--lr-f", type=float, default=1e-3)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-batches", type=int, default=10)
    ap.add_argument("--angles", action="store_true", help="report TP's alignment angles with BPTT")
    ap.add_argument("--gates", choices=("dtp", "gradient"), default="dtp",
                    help="TP's rule on the gates' edges into the state (dtp only on the candidate: gradient)")
    ap.add_argument("--methods", default="tp,bptt", help="comma-separated: tp, bptt")
    args = ap.parse_args()
    main(args.delay, batches=args.batches, n_hidden=args.hidden, alpha=args.alpha, lr_f=args.lr_f,
         every=args.every, seed=args.seed, val_batches=args.val_batches, angles=args.angles, gates=args.gates,
         methods=tuple(args.methods.split(",")))
