"""Helpers shared by the tests: central finite differences of a scalar function of named arrays."""

import numpy as np


def central_differences(loss, params: dict, name: str, step: float = 1e-6) -> np.ndarray:
    """``d loss(params) / d params[name]`` by central differences, entry by entry (the others held)."""
    grad = np.zeros_like(params[name], dtype=np.float64)
    for idx in np.ndindex(grad.shape):
        up, down = dict(params), dict(params)
        up[name], down[name] = params[name].copy(), params[name].copy()
        up[name][idx] += step
        down[name][idx] -= step
        grad[idx] = (loss(up) - loss(down)) / (2 * step)
    return grad
