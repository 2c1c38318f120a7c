"""Fit the rational tanh approximation used by ``benchmarks/fused.py``.

tanh(x) ~ x * P(u) / Q(u) with u = x*x, |x| clamped to CLAMP, P of degree
NP and Q of degree NQ with Q(0) = 1. The fit is a linearised least-squares
problem (x P(u) - tanh(x) Q(u) = 0), iterated with weights 1/Q_prev(u)
(Sanathanan-Koerner) and then Lawson-style reweighting towards minimax of the
absolute error. Run it to reprint the coefficients; they are frozen in
``fused.py`` (so no fitting happens at import time).
"""

import numpy as np

CLAMP = 9.0
NP, NQ = 4, 4


def design(x, tx, w):
    u = x * x
    cols = [x * u**k for k in range(NP + 1)] + [-tx * u**k for k in range(1, NQ + 1)]
    return np.stack(cols, axis=1) * w[:, None], tx * w


def evaluate(coef, x):
    u = x * x
    p = np.polyval(coef[: NP + 1][::-1], u)
    q = np.polyval(np.r_[1.0, coef[NP + 1 :]][::-1], u)
    return x * p / q


def fit(n=40001, iters=60):
    # Chebyshev-like node density: more points near the clamp and the origin.
    t = np.linspace(0.0, np.pi, n)
    x = CLAMP * 0.5 * (1 - np.cos(t))
    x = x[1:]
    tx = np.tanh(x)
    w_sk = np.ones_like(x)
    w_l = np.ones_like(x)
    coef = None
    for it in range(iters):
        A, b = design(x, tx, w_sk * np.sqrt(w_l))
        scale = np.abs(A).max(axis=0)
        sol, *_ = np.linalg.lstsq(A / scale, b, rcond=None)
        coef = sol / scale
        q = np.polyval(np.r_[1.0, coef[NP + 1 :]][::-1], x * x)
        w_sk = 1.0 / np.abs(q)
        err = np.abs(evaluate(coef, x) - tx)
        if it >= 5:  # Lawson update once the SK iteration has settled
            w_l = w_l * (err / err.max() + 1e-3)
            w_l /= w_l.mean()
    return coef


def report(coef):
    xs = np.linspace(-20, 20, 2_000_001)
    ref = np.tanh(xs)
    c64 = np.clip(xs, -CLAMP, CLAMP)
    e64 = np.abs(evaluate(coef, c64) - ref).max()
    # float32 evaluation with float32 coefficients, Horner, as in fused.py
    x32 = np.clip(xs.astype(np.float32), np.float32(-CLAMP), np.float32(CLAMP))
    u = x32 * x32
    P = [np.float32(c) for c in coef[: NP + 1]]
    Q = [np.float32(c) for c in coef[NP + 1 :]]
    p = P[-1]
    for c in P[-2::-1]:
        p = p * u + c
    q = Q[-1]
    for c in Q[-2::-1]:
        q = q * u + c
    q = q * u + np.float32(1)
    y32 = x32 * p / q
    e32 = np.abs(y32.astype(np.float64) - np.tanh(xs.astype(np.float32).astype(np.float64))).max()
    return e64, e32


if __name__ == "__main__":
    coef = fit()
    e64, e32 = report(coef)
    print(f"max abs error: float64 eval {e64:.3g}, float32 eval {e32:.3g}")
    for k in range(NP + 1):
        print(f"_P{k} = {coef[k]!r}")
    for k in range(1, NQ + 1):
        print(f"_Q{k} = {coef[NP + k]!r}")
