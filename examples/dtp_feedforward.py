"""The feed-forward difference target propagation network of Lee et al. (2015).

A stack of tanh layers ``h_i = tanh(W_i h_{i-1} + b_i)`` (``h_0 = x``) and a
softmax output. The top hidden layer gets its target from the loss, ``h_top
- alpha dL/dh_top`` (a ``gradient`` edge from the output). Every lower layer
gets its target by difference target propagation through a learned inverse
of the layer above,

    g_i(h_i) = tanh(V_i h_i + c_i),
    h_hat_{i-1} = h_{i-1} + g_i(h_hat_i) - g_i(h_i),

and each ``g_i`` is trained as a denoising auto-encoder (Gaussian noise
``noise`` on ``h_{i-1}``). Every layer then moves its own weights toward its
target by the gradient of its local loss ``1/2 ||h_i - h_hat_i||^2``: no
gradient crosses a layer. The edge from the data is ``none``.

Backpropagation is the same graph with every credit edge ``gradient``
(``graph.with_rules("gradient")``), trained here from the same
initialisation and batches (``--method bp``). ``--method readout`` trains
only the output layer on the fixed random hidden layers: the reference that
shows whether DTP taught the hidden layers anything.

The data: a seeded Gaussian mixture made here, no download — ``n_classes``
classes in ``n_features`` dimensions, each class a mixture of
``blobs_per_class`` isotropic Gaussian blobs with random centres, so that the
classes are not linearly separable. Run ``python examples/dtp_feedforward.py``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import tpgraph as tp


class GaussianMixture:
    """A seeded classification problem: each class a mixture of Gaussian blobs.

    Parameters
    ----------
    n_features, n_classes, blobs_per_class : int
        Input dimension, number of classes, blobs per class.
    spread : float
        Standard deviation of every blob; the centres are drawn from N(0, 1).
    seed : int
        Seed of the centres (the problem itself); samples use their own generator.
    """

    def __init__(self, n_features: int = 6, n_classes: int = 4, blobs_per_class: int = 5, spread: float = 0.4,
                 seed: int = 0):
        rng = np.random.default_rng(seed)
        self.n_features, self.n_classes, self.spread = n_features, n_classes, spread
        self.centres = rng.normal(0.0, 1.0, size=(n_classes, blobs_per_class, n_features))

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` points ``[n, n_features]`` and their classes ``[n]``."""
        label = rng.integers(0, self.n_classes, n)
        blob = rng.integers(0, self.centres.shape[1], n)
        x = self.centres[label, blob] + rng.normal(0.0, self.spread, size=(n, self.n_features))
        return x, label


def build_dtp_network(n_in: int, hidden: tuple[int, ...], n_out: int, noise: float = 0.1) -> tp.Graph:
    """Declare the DTP network: ``len(hidden)`` tanh layers, one inverse per layer above the first."""
    g = tp.Graph("dtp_net", dtype="float64")
    g.input("x", n_in)
    g.index_input("label", n_out)
    below = "x"
    for i, width in enumerate(hidden, start=1):
        rule = "none" if below == "x" else "dtp"
        g.dense(f"h{i}", [below], width, act="tanh", weights=[f"W{i}"], bias=f"b{i}", rules=[rule])
        if rule == "dtp":
            g.add_inverse(f"h{i}", of=below, weight=f"V{i}", bias=f"c{i}", act="tanh", others="none", noise=noise)
        below = f"h{i}"
    g.softmax_output("y", [below], n_out, weights=["W_out"], bias="b_out", rules=["gradient"])
    g.cross_entropy("loss", "y", "label")
    return g


def main(steps: int = 2000, batch: int = 64, hidden: tuple[int, ...] = (64, 64, 64), alpha: float = 0.5,
         lr: float = 1e-3, lr_inverse: float = 1e-3, warmup: int = 100, every: int = 250, seed: int = 0,
         method: str = "tp", quiet: bool = False) -> list[float]:
    """Train on the Gaussian mixture; return the validation loss at each report (step 0 first).

    ``method="tp"``: DTP (``warmup`` inverse-only steps first); ``"bp"``:
    backpropagation on the same graph; ``"readout"``: only the output layer
    trains. All three from the same initialisation and batches.
    """
    data = GaussianMixture(seed=seed)
    g = build_dtp_network(data.n_features, tuple(hidden), data.n_classes)
    params = g.init_params(seed)
    if method in ("bp", "readout"):
        g, alpha, warmup = g.with_rules("gradient"), 1.0, 0
    elif method != "tp":
        raise ValueError(f"method must be 'tp', 'bp' or 'readout', got {method!r}")
    groups = {"W_out": {"scale": 1.0 / alpha}, "b_out": {"scale": 1.0 / alpha}}  # the output follows the gradient
    groups.update({grp: {"lr": lr_inverse} for grp in params if grp[0] in "Vc"})
    if method == "readout":
        groups.update({grp: {"frozen": True} for grp in params if grp not in ("W_out", "b_out")})
    engine = tp.Engine(g, params, alpha=alpha, optimizer="adam", lr=lr, seed=seed, groups=groups)
    if not quiet:
        print(g, "\n" + engine.plan.describe())
    xv, lv = data.sample(np.random.default_rng(seed + 1), 2000)
    rng = np.random.default_rng(seed + 2)
    history = []
    t0 = time.perf_counter()
    for step in range(0, steps + 1):
        if step > 0:
            x, label = data.sample(rng, batch)
            engine.step({"x": x, "label": label}, update_forward=step > warmup)
        if step % every == 0 or step == steps:
            # the inverses' loss of the last training batch, read before the validation pass
            rec = engine.reconstruction_loss() if method == "tp" and step > 0 else float("nan")
            res = engine.forward({"x": xv, "label": lv})
            acc = float(np.mean(engine.value("y").argmax(axis=1) == lv))
            history.append(res.loss)
            if not quiet:
                print(f"[{method}] step {step:5d}  validation loss {res.loss:.4f}  accuracy {acc:.3f}  "
                      f"inverse reconstruction {rec:.4f}  {time.perf_counter() - t0:.1f} s")
    return history


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--method", choices=("tp", "bp", "readout"), default="tp")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    main(args.steps, method=args.method, seed=args.seed)
