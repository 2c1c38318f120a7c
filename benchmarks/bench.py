"""Speed benchmark: tpgraph engine vs hand-fused Numba steps vs PyTorch CPU.

    python benchmarks/bench.py            # full: L 35/45/100/200, H 128/512
    python benchmarks/bench.py --quick    # about a minute: L 45/100, H 128
    python benchmarks/bench.py --out PATH # JSON path (default benchmarks/latest.json)
    python benchmarks/bench.py --markdown PATH  # also write the report, with a
                                          # header (command, machine, versions, BLAS)
    python benchmarks/bench.py --long     # long sequences instead (a few minutes): compile
                                          # time at L 1000..10000, ms per batch and peak
                                          # memory at L 1000 and 4000, against the goals;
                                          # networkx alone on the same graph as the
                                          # reference for the compile ratio

The paper's SRN (B=20, one-hot inputs of 10, softmax outputs of 10, float32),
one full training step (forward + credit assignment + Adam update) per call.
All implementations of one shape are measured interleaved in one process
(round-robin, rotating order, several repeats; each sample is the mean over a
few consecutive steps, the reported figure the median of the samples), with
one BLAS/OpenMP thread. The fused reference runs in two variants, its products
through NumPy's OpenBLAS (cblas, as the engine's scans) and through ``np.dot``
in Numba (SciPy's OpenBLAS); engine/fused ratios are taken against the faster
of the two at each shape. See benchmarks/README.md for how to read the output.
Progress goes to stderr; the Markdown report to stdout; everything to JSON.
"""

import os

# Must happen before NumPy (and its BLAS) is imported. OPENBLAS_CORETYPE and
# OPENBLAS_L2_SIZE are recorded as found, never changed.
ENV_FOUND = {k: os.environ.get(k) for k in (
    "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
    "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "NUMBA_CACHE_DIR", "TPGRAPH_BLAS")}
for _k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
           "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_k] = "1"

import argparse  # noqa: E402
import ctypes  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import fused  # noqa: E402
from fused import flops_bptt, flops_tp  # noqa: E402,F401  (the FLOP formulas)

B, N_IN, N_OUT = 20, 10, 10
DTYPE = np.float32
LR = 1e-3
ALPHA = 0.1
SIGMA = 0.0


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------
# The one place that calls the tpgraph engine
# ----------------------------------------------------------------------------
def engine_available():
    """(True, "") or (False, why)."""
    try:
        import tpgraph.models.srn  # noqa: F401
    except Exception as e:  # noqa: BLE001 -- the engine is being written concurrently
        return False, f"cannot import tpgraph.models.srn: {type(e).__name__}: {e}"
    return True, ""


def make_engine_step(method, H, seed=0):
    """A callable ``step(x, y) -> loss`` running one tpgraph training step."""
    from tpgraph.models.srn import SRN

    m = SRN(n_in=N_IN, n_hidden=H, n_out=N_OUT, method=method, dtype=DTYPE, seed=seed,
            alpha=ALPHA, optimizer="adam", lr_f=LR, lr_g=LR, lr_y=LR, noise_sigma=SIGMA)
    return m.train_step


def engine_blas(step, L):
    """How the engine behind ``step`` (from :func:`make_engine_step`) does the
    scans' products: "cblas" (NumPy's OpenBLAS) or "numba" (np.dot)."""
    try:
        return "cblas" if step.__self__.engine(L).gemm is not None else "numba"
    except Exception as e:  # noqa: BLE001
        return f"unknown ({type(e).__name__}: {e})"


# Source run in fresh processes (first-call time, peak RSS). {H}, {L}, {steps}
# and {method} are filled in; prints one JSON line.
ENGINE_CHILD = r"""
import time; t0 = time.perf_counter()
import json, resource, sys
import numpy as np
import tpgraph
from tpgraph.models.srn import SRN
t_import = time.perf_counter() - t0
m = SRN(n_in=10, n_hidden={H}, n_out=10, method="{method}", dtype=np.float32, seed=0,
        alpha=0.1, optimizer="adam", lr_f=1e-3, lr_g=1e-3, lr_y=1e-3, noise_sigma=0.0)
rng = np.random.default_rng(0)
x = rng.integers(0, 10, ({L}, 20)); y = rng.integers(0, 10, ({L}, 20))
loss = m.train_step(x, y)
t_first = time.perf_counter() - t0
for _ in range({steps} - 1):
    loss = m.train_step(x, y)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")]
print(json.dumps(dict(import_s=t_import, first_step_s=t_first, total_s=time.perf_counter() - t0,
                      loss=float(loss), maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      vmhwm_mb=int(hwm[0].split()[1]) / 1024 if hwm else None)))
"""

FUSED_CHILD = r"""
import time; t0 = time.perf_counter()
import json, resource, sys
sys.path.insert(0, {here!r})
import numpy as np
from fused import FusedSRN
t_import = time.perf_counter() - t0
m = FusedSRN(10, {H}, 10, 20, {L}, np.float32, 0, blas={blas!r})
rng = np.random.default_rng(0)
x = rng.integers(0, 10, ({L}, 20)); y = rng.integers(0, 10, ({L}, 20))
loss = m.{method}_step(x, y)
t_first = time.perf_counter() - t0
for _ in range({steps} - 1):
    loss = m.{method}_step(x, y)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")]
print(json.dumps(dict(import_s=t_import, first_step_s=t_first, total_s=time.perf_counter() - t0,
                      loss=float(loss), maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      vmhwm_mb=int(hwm[0].split()[1]) / 1024 if hwm else None, blas=m.blas)))
"""

BASELINE_CHILD = r"""
import json, resource, numpy, numba, scipy.linalg
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")]
print(json.dumps(dict(maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      vmhwm_mb=int(hwm[0].split()[1]) / 1024 if hwm else None)))
"""

# Linux keeps ru_maxrss across execve, so a child started directly from this
# (large, torch-importing) process would report this process's peak. RSS
# children are therefore started from a small launcher process.
LAUNCHER = ("import subprocess, sys; "
            "sys.exit(subprocess.run([sys.executable, '-c', sys.argv[1]]).returncode)")


def run_child(src, cache_dir=None, timeout=900, launcher=False):
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    cmd = [sys.executable, "-c", LAUNCHER, src] if launcher else [sys.executable, "-c", src]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=timeout)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"rc {r.returncode}"}
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = wall
    return out


# ----------------------------------------------------------------------------
# PyTorch baselines
# ----------------------------------------------------------------------------
def torch_setup():
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        return None, f"torch not importable ({type(e).__name__}: {e}); torch columns skipped"
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    return torch, ""


def make_torch_rnn_step(torch, H, x, y, seed=0):
    """nn.RNN (tanh) + Linear + autograd BPTT + Adam; one-hot inputs prebuilt."""
    torch.manual_seed(seed)
    L = x.shape[0]
    rnn = torch.nn.RNN(N_IN, H, nonlinearity="tanh")
    lin = torch.nn.Linear(H, N_OUT)
    opt = torch.optim.Adam(list(rnn.parameters()) + list(lin.parameters()), lr=LR)
    xo = torch.nn.functional.one_hot(torch.from_numpy(x), N_IN).float()  # [L,B,n_in]
    yt = torch.from_numpy(y).reshape(-1)
    F = torch.nn.functional

    def step():
        opt.zero_grad(set_to_none=True)
        out, _ = rnn(xo)
        logits = lin(out.reshape(L * B, H))
        loss = F.cross_entropy(logits, yt, reduction="sum") / B  # sum_t mean_b CE
        loss.backward()
        opt.step()
        return loss.item()

    return step


def make_torch_cell_step(torch, H, x, y, seed=0):
    """Manual cell loop: batched input gather, addmm + tanh per step, batched
    output layer, autograd BPTT, Adam."""
    g = torch.Generator().manual_seed(seed)
    L = x.shape[0]
    Wxh = (0.1 * torch.randn(H, N_IN, generator=g)).requires_grad_()
    Wh = torch.linalg.qr(torch.randn(H, H, generator=g))[0].contiguous().requires_grad_()
    bh = torch.zeros(H, requires_grad=True)
    Why = (0.1 * torch.randn(N_OUT, H, generator=g)).requires_grad_()
    by = torch.zeros(N_OUT, requires_grad=True)
    opt = torch.optim.Adam([Wxh, Wh, bh, Why, by], lr=LR)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y).reshape(-1)
    F = torch.nn.functional

    def step():
        opt.zero_grad(set_to_none=True)
        A = F.embedding(xt, Wxh.t()) + bh  # [L,B,H]: W_xh[:, x_t].T + b_h
        WhT = Wh.t()
        h = torch.tanh(A[0])
        hs = [h]
        for t in range(1, L):
            h = torch.tanh(torch.addmm(A[t], h, WhT))
            hs.append(h)
        logits = torch.addmm(by, torch.stack(hs).reshape(L * B, H), Why.t())
        loss = F.cross_entropy(logits, yt, reduction="sum") / B
        loss.backward()
        opt.step()
        return loss.item()

    return step


# ----------------------------------------------------------------------------
# Machine facts
# ----------------------------------------------------------------------------
def cpu_info():
    model, flags = None, ""
    try:
        for line in open("/proc/cpuinfo"):
            if model is None and line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if not flags and line.startswith("flags"):
                flags = line.split(":", 1)[1]
    except OSError:
        pass
    fl = set(flags.split())
    return {
        "cpu_model": model or platform.processor(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "avx2": "avx2" in fl, "avx512f": "avx512f" in fl, "fma": "fma" in fl,
        "platform": platform.platform(), "python": platform.python_version(),
    }


def blas_info():
    """Which BLAS libraries are loaded and which kernel (core type) each uses."""
    info = {}
    try:
        import threadpoolctl

        info["threadpoolctl"] = threadpoolctl.threadpool_info()
    except ImportError:
        info["threadpoolctl"] = None
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        info["numpy_blas"] = {k: blas.get(k) for k in ("name", "version", "openblas configuration")}
    except Exception as e:  # noqa: BLE001
        info["numpy_blas"] = f"unavailable: {e}"
    try:
        import scipy

        cfg = scipy.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        info["scipy_blas_used_by_numba_np_dot"] = {
            k: blas.get(k) for k in ("name", "version", "openblas configuration")}
    except Exception as e:  # noqa: BLE001
        info["scipy_blas_used_by_numba_np_dot"] = f"unavailable: {e}"
    # Ask every loaded OpenBLAS for the kernel it picked at run time.
    cores, libs = {}, []
    try:
        paths = sorted({p for p in open("/proc/self/maps").read().split() if "openblas" in p.lower()
                        and ".so" in p})
    except OSError:
        paths = []
    for p in paths:
        try:
            lib = ctypes.CDLL(p)
        except OSError:
            continue
        entry = {"path": p, "owner": _blas_owner(p), "core": None, "config": None}
        for what in ("corename", "config"):
            for fn in (f"openblas_get_{what}", f"scipy_openblas_get_{what}64_",
                       f"scipy_openblas_get_{what}", f"openblas_get_{what}64_"):
                f = getattr(lib, fn, None)
                if f is not None:
                    f.restype = ctypes.c_char_p
                    entry["core" if what == "corename" else what] = f().decode()
                    break
        if entry["core"] is not None:
            cores[Path(p).name] = entry["core"]
        libs.append(entry)
    info["openblas_kernels_in_use"] = cores
    info["openblas_libraries"] = libs
    return info


def _blas_owner(path):
    """Which package ships the shared library at ``path`` (from its folder)."""
    low = path.replace("\\", "/").lower()
    for owner in ("numpy", "scipy", "torch"):
        if f"/{owner}.libs/" in low or f"/{owner}/" in low:
            return owner
    return "other"


def gemm_peak(n=2048, tries=4):
    """float32 n^3 NumPy matmul, best of a few: GFLOP/s."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.copy()
    c = a @ b
    best = float("inf")
    for _ in range(tries):
        t = time.perf_counter()
        np.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best / 1e9


def _numpy_cblas_sgemm():
    """ctypes handle on cblas_sgemm of NumPy's own OpenBLAS, or None."""
    try:
        paths = sorted({p for p in open("/proc/self/maps").read().split()
                        if "openblas" in p.lower() and ".so" in p and "numpy" in p.lower()})
    except OSError:
        return None
    for p in paths:
        lib = ctypes.CDLL(p)
        for name, it in (("scipy_cblas_sgemm64_", ctypes.c_int64), ("cblas_sgemm64_", ctypes.c_int64),
                         ("scipy_cblas_sgemm", ctypes.c_int), ("cblas_sgemm", ctypes.c_int)):
            f = getattr(lib, name, None)
            if f is not None:
                f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, it, it, it, ctypes.c_float,
                              ctypes.c_void_p, it, ctypes.c_void_p, it, ctypes.c_float, ctypes.c_void_p, it]
                f.restype = None
                return f
    return None


def small_dot_us(H, reps=None):
    """[B,H] @ [H,H] float32 (the shape of every recurrent step), microseconds:
    from NumPy, from ``np.dot`` inside Numba (which goes to SciPy's OpenBLAS),
    and from Numba calling NumPy's OpenBLAS cblas_sgemm through ctypes."""
    from numba import njit

    reps = reps or (300 if H <= 128 else 30)

    @njit(cache=False)
    def loop(a, w, out, n):
        for _ in range(n):
            np.dot(a, w, out)

    rng = np.random.default_rng(0)
    a = rng.standard_normal((B, H)).astype(np.float32)
    w = rng.standard_normal((H, H)).astype(np.float32)
    out = np.empty((B, H), np.float32)
    loop(a, w, out, 1)
    fns = {"numpy": lambda n: [np.dot(a, w, out) for _ in range(n)], "numba_np_dot": lambda n: loop(a, w, out, n)}
    cb = _numpy_cblas_sgemm()
    if cb is not None:
        @njit(cache=False)
        def loop_cb(a, w, out, n):
            M, K = a.shape
            N = w.shape[1]
            for _ in range(n):
                cb(101, 111, 111, M, N, K, 1.0, a.ctypes.data, K, w.ctypes.data, N, 0.0, out.ctypes.data, N)

        ref = a @ w
        loop_cb(a, w, out, 1)
        if np.allclose(out, ref, rtol=1e-4, atol=1e-3):
            fns["numba_numpy_openblas_ctypes"] = lambda n: loop_cb(a, w, out, n)
    res = {k: [] for k in fns}
    for _ in range(7):
        for k, f in fns.items():
            t = time.perf_counter()
            f(reps)
            res[k].append((time.perf_counter() - t) / reps * 1e6)
    return {k: float(np.median(v)) for k, v in res.items()}


# ----------------------------------------------------------------------------
# Interleaved timing
# ----------------------------------------------------------------------------
def time_interleaved(steps, repeats, target_s, warmup):
    """steps: dict name -> zero-arg callable. Returns dict name -> per-step ms
    samples (each the mean over n_inner consecutive calls)."""
    n_inner, last_loss = {}, {}
    for name, f in steps.items():
        for _ in range(warmup):
            last_loss[name] = f()
        t = time.perf_counter()
        last_loss[name] = f()
        dt = time.perf_counter() - t
        n_inner[name] = max(1, int(round(target_s / max(dt, 1e-6))))
    names = list(steps)
    samples = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            f, k = steps[name], n_inner[name]
            t = time.perf_counter()
            for _ in range(k):
                f()
            samples[name].append((time.perf_counter() - t) / k * 1e3)
    return samples, n_inner, last_loss


def ratio(a, b):
    return None if a is None or b is None else a / b


# ----------------------------------------------------------------------------
# Long sequences (--long)
# ----------------------------------------------------------------------------
#: Goals of the long-sequence entries (issue 10).
LONG_GOALS = {"compile_L10000_s": 5.0, "compile_L8000_over_L2000": 4.5}
COMPILE_LENGTHS = (1000, 2000, 4000, 8000, 10000)
STEP_LENGTHS = (1000, 4000)

# Builds the engine of one length in a fresh process: time, nodes, stacks, peak RSS. Prints one JSON line.
COMPILE_CHILD = r"""
import json, time
import numpy as np
from tpgraph.models.srn import SRN
m = SRN(n_in=10, n_hidden=128, n_out=10, method="{method}", dtype=np.float32, seed=0)
m.engine(3)  # imports and the small engine that holds the shared state: not part of the compile
hwm0 = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")][0]
t, c = time.perf_counter(), time.process_time()
eng = m.engine({L})
dt, dc = time.perf_counter() - t, time.process_time() - c
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps(dict(compile_s=dt, compile_cpu_s=dc, nodes=len(eng.plan.where), stacks=len(eng.plan.stacks),
                      peak_rss_growth_mb=(hwm - hwm0) / 1024,
                      structure_estimate_mb=m.estimate_memory({L}).structure / 2**20)))
"""

# The reference for the compile ratio: networkx alone building a DiGraph of the same nodes and edges (each with
# an attribute dict, as the declaration has) and sorting it topologically, timed the same way. The lists of names
# and edges are taken from the SRN's own graph before the timing starts. Prints one JSON line.
NX_REFERENCE_CHILD = r"""
import gc, json, time
import networkx as nx
import numpy as np
from tpgraph.models.srn import SRN
src = SRN(n_in=10, n_hidden=128, n_out=10, method="tp", dtype=np.float32, seed=0).graph({L}).nx
nodes = [(v, dict(d)) for v, d in src.nodes(data=True)]
edges = [(u, v, dict(d)) for u, v, d in src.edges(data=True)]
del src
gc.collect()
gc.disable()  # as the engine's build does
t, c = time.perf_counter(), time.process_time()
g = nx.DiGraph()
for v, d in nodes:
    g.add_node(v, **d)
for u, v, d in edges:
    g.add_edge(u, v, **d)
order = list(nx.topological_sort(g))
dt, dc = time.perf_counter() - t, time.process_time() - c
print(json.dumps(dict(compile_s=dt, compile_cpu_s=dc, nodes=len(order))))
"""
COMPILE_METHODS = ("tp", "bptt", "networkx")

# Peak memory of training steps at one length in a fresh process, against the engine's own estimate.
STEP_MEMORY_CHILD = r"""
import json, resource, time
t0 = time.perf_counter()
import numpy as np
from tpgraph.models.srn import SRN
base = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")][0]
m = SRN(n_in=10, n_hidden=128, n_out=10, method="{method}", dtype=np.float32, seed=0)
rng = np.random.default_rng(0)
x = rng.integers(0, 10, ({L}, 20)); y = rng.integers(0, 10, ({L}, 20))
loss = m.train_step(x, y)
first = time.perf_counter() - t0
for _ in range(4):
    loss = m.train_step(x, y)
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
est = m.estimate_memory({L}, 20)
print(json.dumps(dict(first_step_s=first, peak_rss_mb=hwm / 1024, peak_rss_growth_mb=(hwm - base) / 1024,
                      estimate_mb=est.total / 2**20, estimate_buffers_mb=sum(est.buffers.values()) / 2**20,
                      loss=float(loss))))
"""


def _version_of(module):
    try:
        return __import__(module).__version__
    except ImportError:
        return "not installed"


def run_long(args, command):
    """Compile time and per-batch time and memory of long sequences, against :data:`LONG_GOALS`."""
    import numba

    t_start = time.perf_counter()
    repeats = args.repeats or 3
    log(f"[bench] long sequences: compile at L={list(COMPILE_LENGTHS)} (fresh processes, {repeats} repeats), "
        f"steps at L={list(STEP_LENGTHS)}, H=128, B={B}")
    compile_runs = {m_: {L: [] for L in COMPILE_LENGTHS} for m_ in COMPILE_METHODS}
    for r in range(repeats):  # interleaved: every length in every round
        for method in COMPILE_METHODS:
            for L in COMPILE_LENGTHS:
                child = NX_REFERENCE_CHILD if method == "networkx" else COMPILE_CHILD
                out = run_child(child.format(method=method, L=L))
                compile_runs[method][L].append(out)
                log(f"[bench]   compile {method} L={L}: {out.get('compile_s', out.get('error'))}")
    compile_s = {m_: {str(L): float(np.median([o["compile_s"] for o in runs]))
                      for L, runs in by_len.items() if all("compile_s" in o for o in runs)}
                 for m_, by_len in compile_runs.items()}
    compile_min_s = {m_: {str(L): float(min(o["compile_s"] for o in runs))
                          for L, runs in by_len.items() if all("compile_s" in o for o in runs)}
                     for m_, by_len in compile_runs.items()}
    compile_cpu_s = {m_: {str(L): float(np.median([o["compile_cpu_s"] for o in runs]))
                          for L, runs in by_len.items() if all("compile_s" in o for o in runs)}
                     for m_, by_len in compile_runs.items()}

    steps = {}
    for L in STEP_LENGTHS:
        rng = np.random.default_rng(L)
        x = rng.integers(0, N_IN, (L, B)).astype(np.int64)
        y = rng.integers(0, N_OUT, (L, B)).astype(np.int64)
        for method in ("tp", "bptt"):
            f = make_engine_step(method, 128)
            f(x, y)  # compile outside the timing
            steps[f"engine_{method}_L{L}"] = (lambda f=f, x=x, y=y: f(x, y))
    gc.collect()
    log(f"[bench] steps: {', '.join(steps)} (interleaved) ...")
    samples, n_inner, _ = time_interleaved(steps, max(7, 2 * repeats + 1), 0.2, 1)
    step_ms = {k: float(np.median(v)) for k, v in samples.items()}
    step_min_ms = {k: float(np.min(v)) for k, v in samples.items()}
    memory = {}
    for method in ("tp", "bptt"):
        for L in (*STEP_LENGTHS, 1020):
            memory[f"{method}_L{L}"] = run_child(STEP_MEMORY_CHILD.format(method=method, L=L), launcher=True)
            log(f"[bench]   memory {method} L={L}: {memory[f'{method}_L{L}']}")

    def over(d, a, b):
        return ratio(d.get(a), d.get(b))

    result = {
        "mode": "long",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {"B": B, "n_in": N_IN, "n_out": N_OUT, "H": 128, "dtype": "float32", "repeats": repeats,
                   "compile_lengths": list(COMPILE_LENGTHS), "step_lengths": list(STEP_LENGTHS),
                   "torch_threads": None},
        "goals": LONG_GOALS,
        "compile_s_median": compile_s, "compile_s_min": compile_min_s, "compile_cpu_s_median": compile_cpu_s,
        "compile_runs": {m_: {str(L): v for L, v in d.items()} for m_, d in compile_runs.items()},
        "compile_ratios": {m_: {"L8000_over_L2000": over(compile_s[m_], "8000", "2000"),
                                "L8000_over_L2000_min": over(compile_min_s[m_], "8000", "2000"),
                                "L8000_over_L2000_cpu": over(compile_cpu_s[m_], "8000", "2000"),
                                "L10000_over_L1000": over(compile_s[m_], "10000", "1000")}
                           for m_ in COMPILE_METHODS},
        "step_ms_median": step_ms, "step_ms_min": step_min_ms, "steps_per_sample": n_inner,
        "step_ratios": {m_: {"L4000_over_L1000": over(step_ms, f"engine_{m_}_L4000", f"engine_{m_}_L1000"),
                             "L4000_over_L1000_min": over(step_min_ms, f"engine_{m_}_L4000",
                                                          f"engine_{m_}_L1000")}
                        for m_ in ("tp", "bptt")},
        "memory": memory,
        "machine": cpu_info(), "blas": blas_info(),
        "versions": {"numpy": np.__version__, "numba": numba.__version__, "python": platform.python_version(),
                     "scipy": _version_of("scipy"), "torch": "(not used by --long)"},
        "env_found": ENV_FOUND,
        "env_set": {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                               "NUMBA_NUM_THREADS")},
        "engine_blas": {}, "fused_variants": {},
    }
    result["bench_wall_s"] = time.perf_counter() - t_start
    return write_outputs(result, report_long(result), args, command)


def report_long(r):
    """The Markdown report of a ``--long`` run."""
    g, cs, cm, cc = r["goals"], r["compile_s_median"], r["compile_s_min"], r["compile_cpu_s_median"]
    lines = [f"## Long sequences: H=128, B={r['config']['B']}, float32, 1 thread; {r['date']}", "",
             "### Building the engine (declare + validate + compile), seconds, fresh process per build",
             "", "wall time, median of " + str(r["config"]["repeats"]) + " (fastest in parentheses); "
             "CPU time of the process (median) in its own rows: on a shared machine the wall time also "
             "counts waiting for a core", "",
             "| method | " + " | ".join(f"L={L}" for L in r["config"]["compile_lengths"])
             + " | L8000 / L2000 | at L=10000: nodes, peak RSS growth / structure estimate (MB) |",
             "|---|" + "---|" * (len(r["config"]["compile_lengths"]) + 2)]
    names = {"tp": "TP", "bptt": "BPTT", "networkx": "networkx alone (reference)"}
    methods = [m_ for m_ in COMPILE_METHODS if m_ in r["compile_runs"]]  # older results have no reference
    for m_ in methods:
        runs = r["compile_runs"][m_].get("10000", [{}])
        rat = r["compile_ratios"][m_]
        lines.append(f"| {names[m_]} | " + " | ".join(
            f"{_f(cs[m_].get(str(L)), '{:.2f}')} ({_f(cm[m_].get(str(L)), '{:.2f}')})"
            for L in r["config"]["compile_lengths"])
            + f" | {_f(rat['L8000_over_L2000'], '{:.2f}')} ({_f(rat['L8000_over_L2000_min'], '{:.2f}')}) | "
            + f"{runs[0].get('nodes', '—')}, {_f(runs[0].get('peak_rss_growth_mb'), '{:.0f}')} / "
            + f"{_f(runs[0].get('structure_estimate_mb'), '{:.0f}')} |")
    for m_ in methods:
        lines.append(f"| {names[m_]}, CPU time | " + " | ".join(
            _f(cc[m_].get(str(L)), '{:.2f}') for L in r["config"]["compile_lengths"])
            + f" | {_f(r['compile_ratios'][m_]['L8000_over_L2000_cpu'], '{:.2f}')} | |")
    lines += ["", "The reference builds a networkx DiGraph of the same nodes and edges (attribute dicts included) "
              "and sorts it topologically, nothing else: the growth of the cost per node that any engine declared "
              "on networkx meets on this machine."]
    if "networkx" in r["compile_ratios"]:
        ref = r["compile_ratios"]["networkx"]["L8000_over_L2000"]
        lines += ["Engine's L8000 / L2000 over the reference's, same run: " + ", ".join(
            f"{names[m_]} {_f(ratio(r['compile_ratios'][m_]['L8000_over_L2000'], ref), '{:.2f}')}"
            for m_ in ("tp", "bptt")) + " (1.0: the engine grows exactly as networkx alone does)."]
    lines += ["", f"Goals: L=10000 in under {g['compile_L10000_s']:.0f} s; L8000 / L2000 at most "
              f"{g['compile_L8000_over_L2000']} (linear: 4.0).", "",
              "### One training step (forward + credit + Adam), ms per batch, interleaved", "",
              "| method | L=1000 | L=4000 | L4000 / L1000 (linear: 4.0) | ms per step of the sequence, L=1000 / 4000 |",
              "|---|---|---|---|---|"]
    sm = r["step_ms_median"]
    for m_ in ("tp", "bptt"):
        a, b = sm.get(f"engine_{m_}_L1000"), sm.get(f"engine_{m_}_L4000")
        rat = r["step_ratios"][m_]
        lines.append(f"| {m_.upper()} | {_f(a, '{:.1f}')} | {_f(b, '{:.1f}')} | "
                     f"{_f(rat['L4000_over_L1000'], '{:.2f}')} (fastest samples "
                     f"{_f(rat['L4000_over_L1000_min'], '{:.2f}')}) | "
                     f"{_f(a and a / 1000, '{:.4f}')} / {_f(b and b / 4000, '{:.4f}')} |")
    lines += ["", "### Peak memory, fresh process: import, build, 5 training steps (MB)", "",
              "| method, length | peak RSS | growth over the imports | the engine's estimate (buffers) "
              "| first step, s (process start to end of step 1) |", "|---|---|---|---|---|"]
    for k, v in r["memory"].items():
        if "error" in v:
            lines.append(f"| {k} | error: {v['error']} | | | |")
            continue
        lines.append(f"| {k.replace('_', ', L=').replace('L=L', 'L=')} | {v['peak_rss_mb']:.0f} | "
                     f"{v['peak_rss_growth_mb']:.0f} | {v['estimate_mb']:.0f} ({v['estimate_buffers_mb']:.0f}) | "
                     f"{v['first_step_s']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="L 45 and 100, H 128 only (about a minute)")
    ap.add_argument("--out", default=str(HERE / "latest.json"), help="JSON output path")
    ap.add_argument("--repeats", type=int, default=None, help="round-robin repeats per shape")
    ap.add_argument("--no-subprocess", action="store_true", help="skip first-call and RSS measurements")
    ap.add_argument("--markdown", metavar="PATH", default=None,
                    help="also write the Markdown report to PATH, with a header (command, date, machine, "
                         "versions, OpenBLAS environment and kernels), ready for docs/performance.md")
    ap.add_argument("--long", action="store_true",
                    help="long sequences instead: compile time at L 1000..10000, ms per batch and peak memory at "
                         "L 1000 and 4000, against the goals (a few minutes)")
    args = ap.parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in ([sys.argv[0]] + (sys.argv[1:] if argv is None
                                                                               else list(argv))))
    if args.long:
        if args.out == str(HERE / "latest.json"):
            args.out = str(HERE / "latest_long.json")
        return run_long(args, command)

    quick = args.quick
    lengths = [45, 100] if quick else [35, 45, 100, 200]
    hiddens = [128] if quick else [128, 512]
    # many short samples: on a shared machine the median then averages out
    # bursts of contention better than a few long ones
    repeats = args.repeats or (15 if quick else 15)
    target_s = 0.02 if quick else 0.04
    warmup = 3

    t_start = time.perf_counter()
    import numba

    log(f"[bench] {'quick' if quick else 'full'}: L={lengths} H={hiddens} B={B} float32, "
        f"{repeats} interleaved repeats")
    eng_ok, eng_why = engine_available()
    if not eng_ok:
        log(f"[bench] engine columns skipped: {eng_why}")
    torch, torch_why = torch_setup()
    if torch is None:
        log(f"[bench] {torch_why}")

    log("[bench] GEMM peak (float32 2048^3) ...")
    peaks = [gemm_peak()]
    log(f"[bench]   {peaks[-1]:.1f} GFLOP/s")

    # the fused reference in both BLAS variants (see fused.py): products through
    # NumPy's OpenBLAS (cblas, as the engine's scans) and through np.dot in Numba
    fused_variants = {"npdot": "numba"}
    fused_cblas_skipped = None
    if fused.gemm_for(DTYPE) is not None:
        fused_variants = {"cblas": "cblas", "npdot": "numba"}
    else:
        fused_cblas_skipped = ("NumPy's OpenBLAS cblas_sgemm not found (or TPGRAPH_BLAS=numba): "
                               "only the np.dot variant of the fused reference runs")
        log(f"[bench] {fused_cblas_skipped}")
    impls = []
    if eng_ok:
        impls += ["engine_tp", "engine_bptt"]
    impls += [f"fused_{v}_{m}" for m in ("tp", "bptt") for v in fused_variants]
    if torch is not None:
        impls += ["torch_nn_rnn_bptt", "torch_cell_loop_bptt"]

    medians = {i: {} for i in impls}
    raw = {i: {} for i in impls}
    losses = {i: {} for i in impls}
    flops = {"tp": {}, "bptt": {}}
    flop_bound_ms = {"tp": {}, "bptt": {}}
    small_dot = {}
    errors = {}
    engine_blas_used = {}

    for H in hiddens:
        small_dot[str(H)] = small_dot_us(H)
        for L in lengths:
            key = f"L{L}_H{H}"
            rng = np.random.default_rng(L * 1000 + H)
            x = rng.integers(0, N_IN, (L, B)).astype(np.int64)
            y = rng.integers(0, N_OUT, (L, B)).astype(np.int64)
            steps = {}
            if eng_ok:
                for method in ("tp", "bptt"):
                    try:
                        f = make_engine_step(method, H)
                        steps[f"engine_{method}"] = (lambda f=f: f(x, y))
                        engine_blas_used[f"{method}_{key}"] = engine_blas(f, L)
                    except Exception as e:  # noqa: BLE001
                        errors[f"engine_{method}_{key}"] = f"{type(e).__name__}: {e}"
                        log(f"[bench]   engine {method} failed at {key}: {e}")
            for v, blas in fused_variants.items():
                fm_tp = fused.FusedSRN(N_IN, H, N_OUT, B, L, DTYPE, 0, ALPHA, LR, LR, LR, LR, sigma=SIGMA,
                                       blas=blas)
                fm_bp = fused.FusedSRN(N_IN, H, N_OUT, B, L, DTYPE, 0, ALPHA, LR, LR, LR, LR, blas=blas)
                steps[f"fused_{v}_tp"] = lambda m=fm_tp: m.tp_step(x, y) / L
                steps[f"fused_{v}_bptt"] = lambda m=fm_bp: m.bptt_step(x, y) / L
            if torch is not None:
                steps["torch_nn_rnn_bptt"] = (lambda s=make_torch_rnn_step(torch, H, x, y): s() / L)
                steps["torch_cell_loop_bptt"] = (lambda s=make_torch_cell_step(torch, H, x, y): s() / L)
            gc.collect()
            log(f"[bench] {key}: {', '.join(steps)} ...")
            samples, n_inner, last = time_interleaved(steps, repeats, target_s, warmup)
            for name, s in samples.items():
                medians[name][key] = float(np.median(s))
                raw[name][key] = {"samples_ms": s, "min_ms": float(np.min(s)), "steps_per_sample": n_inner[name]}
                losses[name][key] = float(last[name])
            if len(fused_variants) == 2:
                # same seed, same data, same number of steps: the variants must agree
                for m_ in ("tp", "bptt"):
                    a, b_ = losses[f"fused_cblas_{m_}"][key], losses[f"fused_npdot_{m_}"][key]
                    if not abs(a - b_) <= 1e-4 * abs(b_):
                        errors[f"fused_variants_disagree_{m_}_{key}"] = f"last loss cblas {a} vs np.dot {b_}"
                        log(f"[bench]   WARNING: fused {m_} variants disagree at {key}: {a} vs {b_}")
            flops["tp"][key] = flops_tp(L, B, H, N_IN, N_OUT, SIGMA)
            flops["bptt"][key] = flops_bptt(L, B, H, N_IN, N_OUT)
            log("[bench]   " + "  ".join(f"{n} {medians[n][key]:.3f}" for n in samples) + "  (ms/step)")
            peaks.append(gemm_peak(tries=2))  # the peak is the best seen during the whole run

    peak = max(peaks)
    log(f"[bench] GEMM peak, best of the run: {peak:.1f} GFLOP/s (samples {', '.join(f'{p:.0f}' for p in peaks)})")
    for m in ("tp", "bptt"):
        for key, f in flops[m].items():
            flop_bound_ms[m][key] = f / (peak * 1e9) * 1e3

    # -- fresh-process measurements ---------------------------------------------
    first_call, rss = {}, {}
    if not args.no_subprocess:
        if eng_ok:
            src = ENGINE_CHILD.format(H=128, L=45, steps=1, method="tp")
            log("[bench] first call (engine TP, L=45, H=128): warm Numba cache ...")
            run_child(src)  # make sure the default cache is populated
            first_call["engine_tp_warm_cache"] = run_child(src)
            log("[bench] first call: cold Numba cache (fresh NUMBA_CACHE_DIR) ...")
            d = tempfile.mkdtemp(prefix="tpgraph_numba_cold_")
            try:
                first_call["engine_tp_cold_cache"] = run_child(src, cache_dir=d)
            finally:
                shutil.rmtree(d, ignore_errors=True)
        fused_blas = "cblas" if "cblas" in fused_variants else "numba"  # the faster one where both exist
        src = FUSED_CHILD.format(here=str(HERE), H=128, L=45, steps=1, method="tp", blas=fused_blas)
        run_child(src)
        first_call["fused_tp_warm_cache"] = run_child(src)
        if not quick:
            d = tempfile.mkdtemp(prefix="fused_numba_cold_")
            try:
                log("[bench] first call: fused TP with a cold cache ...")
                first_call["fused_tp_cold_cache"] = run_child(src, cache_dir=d)
            finally:
                shutil.rmtree(d, ignore_errors=True)
        log("[bench] peak RSS of 20 steps at L=200, H=128 ...")
        rss["baseline_numpy_numba_scipy_import"] = run_child(BASELINE_CHILD, launcher=True)
        children = {}
        if eng_ok:
            for method in ("tp", "bptt"):
                children[f"engine_{method}"] = (ENGINE_CHILD, dict(H=128, L=200, method=method))
        for method in ("tp", "bptt"):
            children[f"fused_{method}"] = (FUSED_CHILD, dict(here=str(HERE), H=128, L=200, method=method,
                                                             blas=fused_blas))
        for name, (tmpl, kw) in children.items():
            run_child(tmpl.format(steps=1, **kw))  # warm the cache: measure training, not compiling
            rss[name] = run_child(tmpl.format(steps=20, **kw), launcher=True)

    # -- ratios -------------------------------------------------------------------
    # "fused_tp" / "fused_bptt" below mean the FASTER fused variant (cblas or
    # np.dot) at that shape: the engine is compared against the best reference.
    def med(name, key):
        if name in ("fused_tp", "fused_bptt"):
            vals = [medians[f"fused_{v}_{name[6:]}"].get(key) for v in fused_variants]
            vals = [t for t in vals if t is not None]
            return min(vals) if vals else None
        return medians.get(name, {}).get(key)

    def mn(name, key):
        """The fastest sample (for fused_tp/fused_bptt: of either variant)."""
        names = [f"fused_{v}_{name[6:]}" for v in fused_variants] if name in ("fused_tp", "fused_bptt") else [name]
        vals = [raw[n][key]["min_ms"] for n in names if key in raw.get(n, {})]
        return min(vals) if vals else None

    def faster(method, key):
        vals = {v: medians[f"fused_{v}_{method}"].get(key) for v in fused_variants}
        vals = {v: t for v, t in vals.items() if t is not None}
        return min(vals, key=vals.get) if vals else None

    k45 = "L45_H128"

    def engine_vs_fused(med_, key):
        out = {}
        for m_ in ("tp", "bptt"):
            out[f"{m_}_engine_over_fused"] = ratio(med_(f"engine_{m_}", key), med_(f"fused_{m_}", key))
            for v in ("cblas", "npdot"):
                out[f"{m_}_engine_over_fused_{v}"] = ratio(med_(f"engine_{m_}", key), med_(f"fused_{v}_{m_}", key))
            out[f"fused_cblas_over_fused_npdot_{m_}"] = ratio(med_(f"fused_cblas_{m_}", key),
                                                              med_(f"fused_npdot_{m_}", key))
        return out

    ratios = {
        **engine_vs_fused(med, k45),
        "torch_bptt_over_engine_bptt": ratio(med("torch_nn_rnn_bptt", k45), med("engine_bptt", k45)),
        "tp_engine_over_flop_bound": ratio(med("engine_tp", k45), flop_bound_ms["tp"].get(k45)),
        "tp_engine_L200_over_L100": ratio(med("engine_tp", "L200_H128"), med("engine_tp", "L100_H128")),
        # the same comparisons for the fused reference (always available; faster variant)
        "torch_bptt_over_fused_bptt": ratio(med("torch_nn_rnn_bptt", k45), med("fused_bptt", k45)),
        "torch_cell_bptt_over_fused_bptt": ratio(med("torch_cell_loop_bptt", k45), med("fused_bptt", k45)),
        "fused_tp_over_fused_bptt": ratio(med("fused_tp", k45), med("fused_bptt", k45)),
        "fused_tp_over_flop_bound": ratio(med("fused_tp", k45), flop_bound_ms["tp"].get(k45)),
        "fused_bptt_over_flop_bound": ratio(med("fused_bptt", k45), flop_bound_ms["bptt"].get(k45)),
        "fused_tp_L200_over_L100": ratio(med("fused_tp", "L200_H128"), med("fused_tp", "L100_H128")),
        "engine_tp_over_engine_bptt": ratio(med("engine_tp", k45), med("engine_bptt", k45)),
    }
    # The same key ratios from the fastest sample of each implementation: on a
    # machine shared with other jobs the noise only adds time, so the minimum
    # is the steadier estimate of the uncontended ratio.
    ratios_of_min = {
        **engine_vs_fused(mn, k45),
        "torch_bptt_over_engine_bptt": ratio(mn("torch_nn_rnn_bptt", k45), mn("engine_bptt", k45)),
        "torch_bptt_over_fused_bptt": ratio(mn("torch_nn_rnn_bptt", k45), mn("fused_bptt", k45)),
        "tp_engine_L200_over_L100": ratio(mn("engine_tp", "L200_H128"), mn("engine_tp", "L100_H128")),
        "fused_tp_L200_over_L100": ratio(mn("fused_tp", "L200_H128"), mn("fused_tp", "L100_H128")),
    }
    per_shape = {}
    for key in flops["tp"]:
        per_shape[key] = {
            **engine_vs_fused(med, key),
            "fused_faster_tp": faster("tp", key),
            "fused_faster_bptt": faster("bptt", key),
            "torch_bptt_over_engine_bptt": ratio(med("torch_nn_rnn_bptt", key), med("engine_bptt", key)),
            "torch_bptt_over_fused_bptt": ratio(med("torch_nn_rnn_bptt", key), med("fused_bptt", key)),
            "tp_engine_over_flop_bound": ratio(med("engine_tp", key), flop_bound_ms["tp"][key]),
            "fused_tp_over_flop_bound": ratio(med("fused_tp", key), flop_bound_ms["tp"][key]),
        }
    fused_faster = {m_: {key: faster(m_, key) for key in flops[m_]} for m_ in ("tp", "bptt")}

    versions = {"numpy": np.__version__, "numba": numba.__version__, "python": platform.python_version()}
    try:
        import scipy

        versions["scipy"] = scipy.__version__
    except ImportError:
        pass
    versions["torch"] = torch.__version__ if torch is not None else None

    result = {
        **ratios,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "config": {"B": B, "n_in": N_IN, "n_out": N_OUT, "dtype": "float32", "lr": LR, "alpha": ALPHA,
                   "noise_sigma": SIGMA, "lengths": lengths, "hiddens": hiddens, "repeats": repeats,
                   "target_sample_s": target_s, "blas_threads": 1, "torch_threads": 1 if torch else None},
        "engine_skipped": None if eng_ok else eng_why,
        "engine_blas": engine_blas_used,
        "fused_variants": {v: ("NumPy's OpenBLAS cblas_sgemm via tpgraph.kernels.blas.mm" if b == "cblas"
                               else "np.dot inside Numba (SciPy's OpenBLAS)") for v, b in fused_variants.items()},
        "fused_cblas_skipped": fused_cblas_skipped,
        "fused_reference_for_ratios": "the faster fused variant (cblas or np.dot) at each shape, by median "
                                      "(ratios_of_min: by fastest sample)",
        "fused_faster": fused_faster,
        "torch_skipped": None if torch is not None else torch_why,
        "errors": errors,
        "medians_ms": medians,
        "raw": raw,
        "last_loss_mean_per_step": losses,
        "flops": flops,
        "flop_formulas": {"bptt": fused.flops_bptt.__doc__.strip(), "tp": fused.flops_tp.__doc__.strip()},
        "gemm_peak_gflops_f32": peak,
        "gemm_peak_samples_gflops_f32": peaks,
        "flop_bound_ms": flop_bound_ms,
        "ratios_per_shape": per_shape,
        "ratios_of_min_L45_H128": ratios_of_min,
        "small_dot_B20_us": small_dot,
        "first_call": first_call,
        "peak_rss_L200_H128_20steps": rss,
        "machine": cpu_info(),
        "blas": blas_info(),
        "versions": versions,
        "env_found": ENV_FOUND,
        "env_set": {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                               "NUMBA_NUM_THREADS")},
        "bench_wall_s": None,
    }
    result["bench_wall_s"] = time.perf_counter() - t_start
    return write_outputs(result, report(result), args, command)


def write_outputs(result, text, args, command):
    """The JSON (``--out``), the report on stdout and, with ``--markdown``, the report under its header."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float))
    print(text)
    log(f"[bench] wrote {out} ({result['bench_wall_s']:.0f} s)")
    if args.markdown:
        md = Path(args.markdown)
        md.parent.mkdir(parents=True, exist_ok=True)
        shown = out.resolve().relative_to(ROOT) if out.resolve().is_relative_to(ROOT) else out
        md.write_text(markdown_header(result, command, shown) + "\n" + text + "\n")
        log(f"[bench] wrote {md}")
    return result


def _f(v, fmt="{:.3f}"):
    return "—" if v is None else fmt.format(v)


def report(r):
    keys = [f"L{L}_H{H}" for H in r["config"]["hiddens"] for L in r["config"]["lengths"]]
    label = {
        "engine_tp": "tpgraph engine, TP", "engine_bptt": "tpgraph engine, BPTT",
        "fused_cblas_tp": "fused (cblas), TP", "fused_npdot_tp": "fused (np.dot), TP",
        "fused_cblas_bptt": "fused (cblas), BPTT", "fused_npdot_bptt": "fused (np.dot), BPTT",
        "torch_nn_rnn_bptt": "PyTorch nn.RNN + autograd, BPTT",
        "torch_cell_loop_bptt": "PyTorch addmm/tanh loop + autograd, BPTT",
    }
    lines = []
    m = r["machine"]
    lines.append(f"## SRN training step, ms per batch (median), B={r['config']['B']}, float32, 1 thread")
    lines.append("")
    lines.append(f"{m['cpu_model']}, {m['usable_cores']} cores, AVX-512: {m['avx512f']}; "
                 f"OPENBLAS_CORETYPE={r['env_found']['OPENBLAS_CORETYPE']}, "
                 f"OPENBLAS_L2_SIZE={r['env_found']['OPENBLAS_L2_SIZE']}; OpenBLAS kernels: "
                 f"{', '.join(f'{k}: {v}' for k, v in r['blas']['openblas_kernels_in_use'].items()) or '?'}; "
                 f"{r['date']}")
    lines.append("")
    lines.append("| implementation | " + " | ".join(k.replace("_", " ") for k in keys) + " |")
    lines.append("|---|" + "---|" * len(keys))
    for name, med in r["medians_ms"].items():
        lines.append(f"| {label.get(name, name)} | " + " | ".join(_f(med.get(k)) for k in keys) + " |")
    for m_ in ("bptt", "tp"):
        lines.append(f"| FLOP bound, {m_.upper()} (at {r['gemm_peak_gflops_f32']:.0f} GFLOP/s) | "
                     + " | ".join(_f(r["flop_bound_ms"][m_].get(k)) for k in keys) + " |")
    lines.append("| MFLOP per step, BPTT / TP | " + " | ".join(
        f"{r['flops']['bptt'][k] / 1e6:.0f} / {r['flops']['tp'][k] / 1e6:.0f}" for k in keys) + " |")
    if r["engine_skipped"]:
        lines.append("")
        lines.append(f"Engine columns skipped: {r['engine_skipped']}")
    if r["torch_skipped"]:
        lines.append("")
        lines.append(f"Torch columns skipped: {r['torch_skipped']}")
    if r.get("fused_cblas_skipped"):
        lines.append("")
        lines.append(f"Fused (cblas) rows skipped: {r['fused_cblas_skipped']}")
    lines.append("")
    ff = r.get("fused_faster", {})
    faster = "; ".join(f"{m_.upper()}: " + ", ".join(f"{k.replace('_', ' ')} {v or '—'}"
                                                      for k, v in ff.get(m_, {}).items())
                       for m_ in ("tp", "bptt"))
    lines.append("fused (cblas): every product of the fused step through NumPy's OpenBLAS (`cblas_sgemm`, as "
                 "the engine's scans); fused (np.dot): `np.dot` inside Numba (SciPy's OpenBLAS). "
                 f"Faster fused variant per shape (by median): {faster}.")
    lines.append("")
    lines.append("### Ratios at L=45, H=128 (ratio of medians; < 1 means the numerator is faster)")
    lines.append("")
    lines.append("`fused` without a suffix is the faster fused variant at that shape (cblas or np.dot); "
                 "`_fused_cblas` / `_fused_npdot` are the ratios against each variant.")
    lines.append("")
    lines.append("| ratio | value | from the fastest samples |")
    lines.append("|---|---|---|")
    rm = r.get("ratios_of_min_L45_H128", {})
    for k in ("tp_engine_over_fused", "tp_engine_over_fused_cblas", "tp_engine_over_fused_npdot",
              "bptt_engine_over_fused", "bptt_engine_over_fused_cblas", "bptt_engine_over_fused_npdot",
              "fused_cblas_over_fused_npdot_tp", "fused_cblas_over_fused_npdot_bptt",
              "torch_bptt_over_engine_bptt",
              "tp_engine_over_flop_bound", "tp_engine_L200_over_L100", "engine_tp_over_engine_bptt",
              "torch_bptt_over_fused_bptt", "torch_cell_bptt_over_fused_bptt", "fused_tp_over_fused_bptt",
              "fused_tp_over_flop_bound", "fused_bptt_over_flop_bound", "fused_tp_L200_over_L100"):
        lines.append(f"| {k} | {_f(r.get(k), '{:.2f}')} | {_f(rm.get(k), '{:.2f}') if k in rm else ''} |")
    sd = r["small_dot_B20_us"]
    if sd:
        lines.append("")
        lines.append("One recurrent product [20xH] @ [HxH] float32, µs (median): " + "; ".join(
            f"H={h}: NumPy {v['numpy']:.1f}, np.dot in Numba (SciPy's OpenBLAS) {v['numba_np_dot']:.1f}"
            + (f", Numba -> NumPy's OpenBLAS via ctypes {v['numba_numpy_openblas_ctypes']:.1f}"
               if "numba_numpy_openblas_ctypes" in v else "")
            for h, v in sd.items()))
    if r["first_call"]:
        lines.append("")
        lines.append("### Fresh process: import + build + one TP step (L=45, H=128), seconds")
        lines.append("")
        lines.append("| case | import | to end of first step | process wall |")
        lines.append("|---|---|---|---|")
        for k, v in r["first_call"].items():
            if "error" in v:
                lines.append(f"| {k} | error: {v['error']} | | |")
            else:
                lines.append(f"| {k} | {v['import_s']:.2f} | {v['first_step_s']:.2f} | {v['process_wall_s']:.2f} |")
    if r["peak_rss_L200_H128_20steps"]:
        lines.append("")
        lines.append("Peak RSS (MB, getrusage ru_maxrss), 20 steps at L=200, H=128: " + "; ".join(
            f"{k} {v['maxrss_mb']:.0f}" if "maxrss_mb" in v else f"{k} error: {v.get('error')}"
            for k, v in r["peak_rss_L200_H128_20steps"].items()))
    return "\n".join(lines)


def markdown_header(r, command, json_path):
    """The provenance block written above the report by ``--markdown``."""
    m, v, b = r["machine"], r["versions"], r["blas"]
    yes = lambda f: "yes" if f else "no"  # noqa: E731
    env = r["env_found"]
    libs = b.get("openblas_libraries") or []
    use = {"numpy": "NumPy, the engine's scans (cblas), fused (cblas)",
           "scipy": "`np.dot` inside Numba: fused (np.dot), the engine if it runs on np.dot",
           "torch": "PyTorch"}
    blas_lines = [f"  * {lib['owner']}: `{Path(lib['path']).name}`, kernel **{lib['core'] or '?'}**"
                  + (f" ({lib['config']})" if lib.get("config") else "")
                  + (f" -- used by {use[lib['owner']]}" if lib["owner"] in use else "")
                  for lib in libs]
    eng = sorted(set(r.get("engine_blas", {}).values()))
    lines = [
        f"<!-- written by benchmarks/bench.py --markdown; raw results in {json_path} -->",
        "",
        f"* Command: `{command}`",
        f"* Date: {r['date']} ({r['mode']} run, {r['bench_wall_s']:.0f} s)",
        f"* Machine: {m['cpu_model']}, {m['logical_cores']} logical cores ({m['usable_cores']} usable); "
        f"AVX2 {yes(m['avx2'])}, AVX-512 {yes(m['avx512f'])}, FMA {yes(m['fma'])}; {m['platform']}",
        f"* Versions: Python {v.get('python')}, NumPy {v.get('numpy')}, Numba {v.get('numba')}, "
        f"SciPy {v.get('scipy', 'not installed')}, PyTorch {v.get('torch') or 'not installed'}",
        "* OpenBLAS environment as found: " + ", ".join(
            f"{k}={env.get(k) if env.get(k) is not None else '(unset)'}"
            for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                      "TPGRAPH_BLAS"))
        + "; set by the benchmark: " + ", ".join(f"{k}={val}" for k, val in r["env_set"].items())
        + (", torch threads 1" if r["config"].get("torch_threads") else ""),
        "* BLAS kernels in use (`openblas_get_corename`):" + ("" if blas_lines else " not found"),
        *blas_lines,
        *([f"* Engine products: {', '.join(eng) if eng else 'engine not measured'}; fused reference: "
           + ", ".join(f"{k} = {d}" for k, d in r["fused_variants"].items())
           + "; engine/fused ratios are against the faster fused variant at each shape"]
          if r["fused_variants"] else []),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
