"""Numba kernels used by tpgraph."""
