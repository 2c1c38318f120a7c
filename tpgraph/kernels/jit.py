"""The one place where tpgraph's Numba compilation flags live.

Every kernel is a module-level function compiled with ``cache=True`` (compile
time is paid once per machine) and ``error_model="numpy"`` (no division checks,
so loops over activations vectorise; lesson 2 of PERFORMANCE.md).
"""

from numba import njit

#: Decorator used for every tpgraph kernel.
kernel = njit(cache=True, error_model="numpy", nogil=True)
