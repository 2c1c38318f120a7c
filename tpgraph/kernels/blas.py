"""Matrix products inside Numba kernels through NumPy's own OpenBLAS.

``np.dot`` inside a Numba kernel calls SciPy's BLAS. On the machines this
project is measured on, SciPy's OpenBLAS ran the scan's small product
``[20 x 128] @ [128 x 128]`` in about 18 us, NumPy's OpenBLAS in about 10 us
(``benchmarks/README.md``). The recurrent scans issue one such product per
time step, so they call NumPy's ``cblas_?gemm`` directly: the ctypes function
is passed to the kernels as an argument (a first-class function; the kernels
stay cacheable). Where NumPy ships no OpenBLAS we can find (other platforms,
other builds), or with ``TPGRAPH_BLAS=numba`` in the environment, :data:`GEMM`
is empty and the engine uses the kernels' ``np.dot`` variants instead.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

from .jit import kernel

ROW_MAJOR = np.int32(101)
NO_TRANS = np.int32(111)


def _bind(fn, itype, ftype):
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, itype, itype, itype, ftype, ctypes.c_void_p,
                   itype, ctypes.c_void_p, itype, ftype, ctypes.c_void_p, itype]
    fn.restype = None
    return fn


def _load() -> dict:
    if os.environ.get("TPGRAPH_BLAS", "").lower() == "numba":
        return {}
    root = Path(np.__file__).resolve().parent
    candidates = sorted((root.parent / "numpy.libs").glob("libscipy_openblas*.so*"))
    candidates += sorted((root / ".dylibs").glob("libscipy_openblas*.dylib"))
    for path in candidates:
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:
            continue
        for prefix, suffix, itype in (("scipy_cblas_", "64_", ctypes.c_int64), ("scipy_cblas_", "", ctypes.c_int),
                                      ("cblas_", "64_", ctypes.c_int64), ("cblas_", "", ctypes.c_int)):
            s = getattr(lib, f"{prefix}sgemm{suffix}", None)
            d = getattr(lib, f"{prefix}dgemm{suffix}", None)
            if s is not None and d is not None:
                return {np.dtype(np.float32): _bind(s, itype, ctypes.c_float),
                        np.dtype(np.float64): _bind(d, itype, ctypes.c_double)}
    return {}


#: dtype -> ctypes ``cblas_?gemm`` of NumPy's OpenBLAS (empty if none was found).
GEMM: dict = _load()


def gemm_for(dtype):
    """The ``cblas_?gemm`` for ``dtype``, or None (then use the ``np.dot`` kernels)."""
    return GEMM.get(np.dtype(dtype))


@kernel
def mm(gemm, a, b, out, one, zero):
    """``out = a @ b`` for C-contiguous 2-D blocks, by NumPy's OpenBLAS."""
    m, k = a.shape
    n = b.shape[1]
    gemm(ROW_MAJOR, NO_TRANS, NO_TRANS, m, n, k, one, a.ctypes.data, k, b.ctypes.data, n, zero,
         out.ctypes.data, n)
