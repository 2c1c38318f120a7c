"""Declare a small multi-branch graph by hand and train it with difference target propagation.

The graph (not an RNN): two hidden layers and a skip connection, so that the
first hidden layer receives targets along two credit paths which the linear
merge adds up.

    x ──> h1 ──> h2 ──> h3 ──> y ──> loss <── label
           └──────────────^   (h3 takes h2 and h1)

Every hidden edge uses ``dtp`` with a learned inverse; the output edge uses
``gradient`` (the paper's step target). The task: classify points of three
interleaved spirals. Run ``python examples/custom_graph.py``.
"""

from __future__ import annotations

import argparse

import numpy as np

import tpgraph as tp


def spirals(rng: np.random.Generator, n: int, classes: int = 3, noise: float = 0.15):
    """``n`` points of ``classes`` interleaved spirals in 2-D, lifted to 8 features."""
    label = rng.integers(0, classes, n)
    r = rng.uniform(0.1, 1.0, n)
    angle = 3.0 * r + 2 * np.pi * label / classes + rng.normal(0, noise, n)
    xy = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1)
    feats = np.concatenate([xy, xy ** 2, xy[:, :1] * xy[:, 1:], np.sin(3 * xy), r[:, None]], axis=1)
    return feats, label


def build_graph() -> tp.Graph:
    g = tp.Graph("spiral_net", dtype="float64")
    g.input("x", 8)
    g.index_input("label", 3)
    g.dense("h1", ["x"], 32, act="tanh", weights=["W1"], bias="b1", rules=["none"])
    g.dense("h2", ["h1"], 32, act="tanh", weights=["W2"], bias="b2", rules=["dtp"])
    g.dense("h3", ["h2", "h1"], 32, act="tanh", weights=["W3", "W_skip"], bias="b3", rules=["dtp", "dtp"])
    g.add_inverse("h2", of="h1", weight="V2", bias="c2", noise=0.1)
    g.add_inverse("h3", of="h2", weight="V3", bias="c3", others="none", noise=0.1)
    g.add_inverse("h3", of="h1", weight="V3_skip", bias="c3_skip", others="none", noise=0.1)
    g.softmax_output("y", ["h3"], 3, weights=["W_out"], bias="b_out", rules=["gradient"])
    g.cross_entropy("loss", "y", "label")
    return g


def main(steps: int = 3000, batch: int = 64, seed: int = 0, every: int = 300, quiet: bool = False) -> list[float]:
    """Train and return the validation loss at each report."""
    g = build_graph()
    engine = tp.Engine(g, alpha=0.5, optimizer="adam", lr=2e-3, seed=seed,
                       groups={"W_out": {"scale": 2.0}, "b_out": {"scale": 2.0}})  # scale 1/alpha
    if not quiet:
        print(g, "\n" + engine.plan.describe())
    rng = np.random.default_rng(seed)
    xv, lv = spirals(np.random.default_rng(seed + 1), 2000)
    history = []
    for step in range(1, steps + 1):
        x, label = spirals(rng, batch)
        engine.step({"x": x, "label": label}, update_forward=step > 200)  # inverse warm-up first
        if step % every == 0 or step == 1:
            res = engine.forward({"x": xv, "label": lv})
            acc = float(np.mean(engine.value("y").argmax(axis=1) == lv))
            history.append(res.loss)
            if not quiet:
                print(f"step {step:5d}  validation loss {res.loss:.4f}  accuracy {acc:.3f}  "
                      f"h1 receives {len(engine.proposals('h1')) if step > 200 else 0} proposals")
    return history


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    main(args.steps, seed=args.seed)
