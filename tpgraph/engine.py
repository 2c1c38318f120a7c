"""The engine: one generic scheduler for target propagation on any compiled graph.

State
    A :class:`~tpgraph.plan.Plan` (stacks in topological order), a
    :class:`~tpgraph.params.ParamStore` (the live parameter arrays), one
    optimiser per trained parameter group, a seeded random generator for
    denoising noise, and per batch size a :class:`~tpgraph.buffers.Buffers`
    of preallocated arrays.

One step on a batch (:meth:`Engine.step`)
    1. *forward*: stacks in topological order; losses also form their
       proposals ``-alpha dL/dh``;
    2. *targets*: stacks in reverse topological order. When a stack's turn
       comes, every consumer has delivered its proposal into the stack's
       displacement buffer ``D`` (merging is accumulation: each credit path
       adds its displacement, none overwrites another); the merge strategy is
       finalised (linear: the sum, Eq. 22; mean: the sum over the count; a
       registered function: called on the proposals), then the stack computes
       its own proposals for its inputs with each edge's credit rule. A chain
       runs this as one scan kernel, the merge inside it. Targets use the
       inverse parameters from before this batch's update;
    3. *local gradients*: every dense node's local loss
       ``1/2 ||f(inputs at forward values) - h_hat||^2``, summed over the
       batch and over all nodes of a group; every inverse's reconstruction
       loss (with noise if asked);
    4. *updates*: each group's optimiser applies its gradient (times the
       group's ``scale``). Forward groups can be frozen (``update_forward=False``,
       the inverse-only warm-up) and so can inverse groups.

With every credit edge ``gradient`` and the linear merge, the displacement
reaching each node is ``-alpha dL/dh`` and each local gradient is ``alpha``
times the exact gradient of the loss: backpropagation, on the same graph
(see :meth:`tpgraph.graph.Graph.with_rules`).

After a step everything can be read without recomputation: values, targets,
each edge's proposal, local and reconstruction losses, gradients and the
updates applied (:meth:`value`, :meth:`target`, :meth:`proposal`, ...).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .buffers import Buffers, buffer_bytes
from .errors import ConfigError, DataError, DivergenceError, GraphError
from .graph import Graph
from .kernels import dense as kd
from .kernels.blas import gemm_for
from .kinds import RUNNERS
from .memory import MemoryEstimate, check_memory, parse_bytes
from .merges import get_merge, wants_context
from .nodes import Dense, IndexInput
from .optim import Optimizer, make_optimizer
from .params import ParamStore
from .plan import Plan, act_code, compile_plan


def plan_memory(plan: Plan, batch_size: int) -> MemoryEstimate:
    """The arrays an engine running ``plan`` makes for a batch size: its buffers and the losses' scratch.

    See :meth:`Engine.estimate_memory`; nothing is allocated.
    """
    dtype = plan.graph.dtype
    nbytes = buffer_bytes(plan, batch_size, dtype)
    scratch = sum(st.m * batch_size * st.slots[0].src_size for st in plan.stacks if st.node.is_loss)
    nbytes[dtype.name] = nbytes.get(dtype.name, 0) + scratch * dtype.itemsize
    return MemoryEstimate(nbytes)


class StepResult:
    """What one step returns: the total loss (sum over loss nodes, each reduced over the batch)."""

    __slots__ = ("loss", "_engine")

    def __init__(self, loss: float, engine: "Engine"):
        self.loss = loss
        self._engine = engine

    @property
    def losses(self) -> dict:
        """Each loss node's value (from the engine's last forward pass)."""
        return self._engine.losses()

    def __float__(self):
        return self.loss

    def __repr__(self):
        return f"StepResult(loss={self.loss:.6g})"


class Engine:
    """Runs target propagation (or backpropagation) on a graph.

    Parameters
    ----------
    graph : Graph or Plan
        The declared graph (compiled here) or an already compiled plan.
    params : ParamStore, optional
        Parameters to train; default ``graph.init_params(seed)``.
    alpha : float
        Step size of the loss targets ``h - alpha dL/dh`` (the paper's ``alpha_i``).
    optimizer : str
        Default optimiser for every group: ``"sgd"``, ``"momentum"``, ``"nesterov"``, ``"adam"``.
    lr : float
        Default learning rate.
    groups : dict, optional
        Per-group overrides: ``{"W_hy": {"lr": 1e-3, "optimizer": "adam", "scale": 1.0}}``;
        ``scale`` multiplies the group's gradient before its optimiser (e.g.
        ``1/alpha`` so that an output layer follows the plain gradient).
    seed : int
        Seed of the parameters (when not given), of the denoising noise and of
        the fixed feedback matrices of ``fa`` edges (``engine.feedback[group]``).
    fast_tanh : bool
        Use the rational tanh for float32 graphs (exact ``np.tanh`` otherwise).
    check_finite : bool
        After each step, check the loss and every parameter (cheap) and raise
        :class:`~tpgraph.errors.DivergenceError` naming the step and quantity.
    blas : {"auto", "cblas", "numba"}
        How the scan kernels multiply: through NumPy's OpenBLAS when found
        (``"auto"``; faster for the small per-step products), or ``np.dot``
        inside Numba (``"numba"``). See :mod:`tpgraph.kernels.blas`.
    memory_limit : int or str, optional
        The most bytes the buffers of one batch size may take (``"8G"``,
        ``"off"``); default :data:`tpgraph.memory.MEMORY_ENV` or the memory
        available when they are made. A batch size whose buffers
        (:meth:`estimate_memory`) exceed it is refused before allocating,
        with :class:`~tpgraph.errors.MemoryLimitError`.
    progress : callable, optional
        ``progress(stage, done, total)`` during compilation (see
        :func:`tpgraph.plan.compile_plan`).
    """

    def __init__(self, graph: Graph | Plan, params: ParamStore | None = None, *, alpha: float = 1.0,
                 optimizer: str = "sgd", lr: float = 0.01, groups: Mapping | None = None, seed: int = 0,
                 fast_tanh: bool = True, check_finite: bool = True, optimizer_options: Mapping | None = None,
                 blas: str = "auto", memory_limit: int | str | None = None, progress=None):
        if memory_limit is not None:
            parse_bytes(memory_limit, "memory_limit")  # refuse a malformed limit now, not at the first batch
        self.memory_limit = memory_limit
        self.plan = graph if isinstance(graph, Plan) else compile_plan(graph, progress=progress)
        self.graph = self.plan.graph
        dtype = self.graph.dtype
        if not (isinstance(alpha, (int, float)) and np.isfinite(alpha) and alpha > 0):
            raise ConfigError(f"alpha must be a finite number > 0, got {alpha!r}")
        self.alpha = float(alpha)
        if params is None:
            params = self.graph.init_params(seed)
        shapes = self.plan.param_shapes
        if set(params) != set(shapes):
            raise GraphError(f"params do not match the graph's groups: missing {sorted(set(shapes) - set(params))}, "
                             f"unexpected {sorted(set(params) - set(shapes))}")
        for k, shp in shapes.items():
            if params[k].shape != shp or params[k].dtype != dtype:
                raise GraphError(f"parameter group {k!r}: the graph needs {shp} {dtype}, params hold "
                                 f"{params[k].shape} {params[k].dtype}")
        self.params = params
        self.rng = np.random.default_rng(seed)
        self.step_count = 0
        # products inside the scan kernels go through NumPy's OpenBLAS when it can be found
        self.gemm = gemm_for(dtype) if blas in ("auto", "cblas") else None
        if blas == "cblas" and self.gemm is None:
            raise ConfigError("blas='cblas' asked for NumPy's OpenBLAS, which was not found; use blas='auto'")
        if blas not in ("auto", "cblas", "numba"):
            raise ConfigError(f"blas must be 'auto', 'cblas' or 'numba', got {blas!r}")
        self.one, self.zero = dtype.type(1), dtype.type(0)
        self.check_finite = check_finite
        self.codes = {st.id: act_code(st.node.act, dtype, fast_tanh) for st in self.plan.stacks
                      if isinstance(st.node, Dense)}
        self.inv_codes = {(st.id, s.index): act_code(s.inverse.act, dtype, fast_tanh)
                          for st in self.plan.stacks for s in st.slots if s.inverse is not None}
        # contiguous transposed copies of every weight used in a product (refreshed each step)
        weight_groups = set()  # only those some product or gather reads (an unused inverse is not copied)
        for st in self.plan.stacks:
            if isinstance(st.node, Dense):
                weight_groups.update(st.node.weights)
                weight_groups.update(s.inverse.weight for s in st.slots if s.inverse is not None
                                     and s.credit.needs_inverse and s.inverse.impl.has_params)
                weight_groups.update(s.context.group for s in st.slots if s.context is not None)
        self.wt = {g: np.ascontiguousarray(self.params[g].T) for g in sorted(weight_groups)}
        # what inverse kinds derive from the live parameters (the analytic inverse: the transposed
        # (W^T W + reg I)^-1 W^T per weight group and reg), rebuilt before each step's target pass
        self.inverse_mats: dict[tuple, np.ndarray] = {}
        uses: dict = {}
        for st in self.plan.stacks:
            for s in st.slots:
                if s.inverse is not None and s.credit.needs_inverse:
                    uses.setdefault(s.inverse.impl, []).append(s)
        self._inverse_refresh = [impl for impl, slots in uses.items() if impl.setup(self, slots)]
        # fixed feedback matrices of rules that use one in place of a forward weight (fa): one per
        # forward weight group, seeded by the engine's seed and the group, inspectable, never trained
        self.feedback: dict[str, np.ndarray] = {}
        for st in self.plan.stacks:
            for s in st.slots:
                if s.credit.needs_feedback and s.weight not in self.feedback:
                    self.feedback[s.weight] = s.credit.make_feedback(s.weight, shapes[s.weight], dtype, seed)
        self.seed = seed
        self.fast_tanh = fast_tanh
        self.zero_src = {}
        for st in self.plan.stacks:
            for s in st.slots:
                self.zero_src.setdefault(s.src_size, np.zeros(s.src_size, dtype=dtype))
        self.grads = {g: np.zeros(shp, dtype=dtype) for g, shp in shapes.items()}
        self.updates = {g: np.zeros(shp, dtype=dtype) for g, shp in shapes.items()}
        self._written: set[str] = set()
        self._gtmp = {g: np.zeros(shp, dtype=dtype) for g, shp in shapes.items()}
        self.inverse_groups = set(self.plan.inverse_groups)
        self.forward_groups = set(self.plan.forward_groups)
        self.group_options = {}
        self.optimizers: dict[str, Optimizer] = {}
        groups = dict(groups or {})
        unknown = sorted(set(groups) - set(shapes))
        if unknown:
            raise ConfigError(f"group options name unknown parameter groups {unknown}; groups: {sorted(shapes)}")
        for g in shapes:
            opt = dict(groups.get(g, {}))
            bad = sorted(set(opt) - {"lr", "optimizer", "scale", "options", "frozen"})
            if bad:
                raise ConfigError(f"options of group {g!r}: unknown keys {bad}; known: lr, optimizer, scale, options, frozen")
            name = opt.get("optimizer", optimizer)
            options = dict(optimizer_options or {}) if name == optimizer else {}
            options.update(opt.get("options", {}))
            self.optimizers[g] = make_optimizer(name, opt.get("lr", lr), **options)
            scale = opt.get("scale", 1.0)
            if not (isinstance(scale, (int, float)) and np.isfinite(scale)):
                raise ConfigError(f"options of group {g!r}: scale must be a finite number, got {scale!r}")
            self.group_options[g] = {"scale": float(scale), "frozen": bool(opt.get("frozen", False))}
        self._buffers: dict[int, Buffers] = {}
        self.buf: Buffers | None = None
        self._data_stacks = [st for st in self.plan.stacks if st.node.is_data]
        self._data_nodes = {v: self.graph.node(v) for st in self._data_stacks for v in st.members}
        self._feed_keys: dict[tuple, bool] = {}  # batch keys already checked against the graph
        self._d_dirty = [True] * len(self.plan.stacks)  # per stack: displacement not yet written this step
        self._losses = [st for st in self.plan.stacks if st.node.is_loss]
        self._loss_scratch = {}
        # merges run inside the kernels: compiled ones (by stack), scratch for weighted deliveries
        self.jit_merges = {st.id: get_merge(st.merge) for st in self.plan.stacks if st.merge_kind == "jit"}
        self._all_members = {st.id: np.arange(st.m, dtype=np.int64) for st in self.plan.stacks}
        self._zero_blocks: dict[tuple, np.ndarray] = {}
        self._scale_scratch: dict[tuple, tuple] = {}
        self._scratch: dict = {}
        self._last = None

    def __repr__(self):
        return f"Engine({self.plan!r}, alpha={self.alpha}, step={self.step_count})"

    # ------------------------------------------------------------------ data
    def estimate_memory(self, batch_size: int) -> MemoryEstimate:
        """What the first batch of ``batch_size`` will allocate (its buffers), without allocating.

        The plan fixes every buffer's shape: values, displacements, proposals,
        gathered inputs and the inverses' arrays of every stack, by dtype
        (:func:`tpgraph.buffers.buffer_bytes`), plus the losses' scratch.
        Each batch size has its own buffers; the graph and plan themselves
        are already allocated and not counted.

        Examples
        --------
        >>> import tpgraph as tp
        >>> eng = tp.Engine(tp.build_srn(100, 10, 128, 10))
        >>> est = eng.estimate_memory(20)
        >>> est.buffers["float32"] > 100 * 20 * 128 * 4   # at least the hidden states
        True
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise DataError(f"batch size must be an int >= 1, got {batch_size!r}")
        return plan_memory(self.plan, int(batch_size))

    def _buffers_for(self, B: int) -> Buffers:
        b = self._buffers.get(B)
        if b is None:
            check_memory(self.estimate_memory(B), f"graph {self.graph.name!r} ({len(self.plan.where)} nodes) "
                         f"at batch size {B}", self.memory_limit, hint="Use a smaller batch or a smaller graph.")
            b = Buffers(self.plan, B, self.graph.dtype)
            self._buffers[B] = b
        return b

    def feed(self, batch: Mapping) -> None:
        """Copy a batch into the input buffers, validating it first.

        ``batch`` maps a data node's name to its array (``[B, size]`` real,
        ``[B]`` integer), or a tuple of names to a stacked array
        (``[len(names), B, ...]``) — one copy for a whole unrolled sequence.
        """
        if not isinstance(batch, Mapping) or not batch:
            raise DataError("batch must be a non-empty mapping of data node names to arrays")
        items = []
        B = None
        fed = set()
        for key, arr in batch.items():
            names = tuple(key) if isinstance(key, tuple) else (key,)
            if not names:
                raise DataError("batch has an empty tuple key; name the data nodes it feeds")
            try:
                arr = np.asarray(arr)
            except ValueError as exc:
                raise DataError(f"batch for {names[0]!r} is not a rectangular array: {exc}") from None
            if arr.dtype == object:
                raise DataError(f"batch for {names[0]!r} is not a numeric array (dtype object)")
            stacked = isinstance(key, tuple)
            known = self._feed_keys.get(names)
            if known is None:
                self._check_names(names, stacked)
                self._feed_keys[names] = True
            lead = arr.shape[1:] if stacked else arr.shape
            if stacked and (arr.ndim < 2 or arr.shape[0] != len(names)):
                raise DataError(f"stacked batch for {len(names)} nodes ({names[0]!r}..) must have shape "
                                f"[{len(names)}, B, ...], got {arr.shape}")
            n_before = len(fed)
            fed.update(names)
            if len(fed) != n_before + len(names):
                raise DataError(f"batch feeds some of {list(names[:3])} twice")
            node = self._data_nodes[names[0]]
            if len(lead) == 0:
                raise DataError(f"batch for {names[0]!r} has no batch dimension (shape {arr.shape})")
            if B is None:
                B = lead[0]
            if lead[0] != B or B < 1:
                raise DataError(f"batch for {names[0]!r} has batch size {lead[0]}, others have {B}")
            if isinstance(node, IndexInput):
                if lead != (B,):
                    raise DataError(f"integer input {names[0]!r} must have shape [B], got {lead}")
                if not np.issubdtype(arr.dtype, np.integer):
                    raise DataError(f"integer input {names[0]!r} must hold integers, got dtype {arr.dtype}")
                lo, hi = int(arr.min()), int(arr.max())
                if lo < 0 or hi >= node.num_classes:
                    raise DataError(f"integer input {names[0]!r} has values in [{lo}, {hi}]; allowed 0..{node.num_classes - 1}")
            else:
                if lead != (B, node.size):
                    raise DataError(f"input {names[0]!r} must have shape [B, {node.size}], got {list(lead)}")
                if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
                    raise DataError(f"input {names[0]!r} must be real numbers, got dtype {arr.dtype}")
                if not np.all(np.isfinite(arr)):
                    raise DataError(f"input {names[0]!r} contains NaN or inf")
            items.append((names, arr, stacked))
        if len(fed) != len(self._data_nodes):
            names = sorted(n for n in self._data_nodes if n not in fed)
            raise DataError(f"batch does not feed the data node(s) {names[:5]}{' ...' if len(names) > 5 else ''}")
        self.buf = self._buffers_for(B)
        for names, arr, stacked in items:
            sid, k0 = self.plan.where[names[0]]
            st = self.plan.stacks[sid]
            h = self.buf.stacks[sid].h
            if stacked and k0 == 0 and tuple(st.members) == names:
                np.copyto(h, arr, casting="unsafe")
            elif stacked:
                for name, a in zip(names, arr):
                    s, k = self.plan.where[name]
                    np.copyto(self.buf.stacks[s].h[k], a, casting="unsafe")
            else:
                np.copyto(h[k0], arr, casting="unsafe")

    def _check_names(self, names, stacked):
        data = self._data_nodes
        for name in names:
            if name not in data:
                if name not in self.plan.where:
                    raise DataError(f"batch names {name!r}, which is not a node of graph {self.graph.name!r}")
                raise DataError(f"batch names {name!r}, a {self.graph.node(name).kind} node; "
                                f"only data inputs are fed")
        if len(set(names)) != len(names):
            raise DataError(f"batch key {names[:3]}... names a node twice")
        node = data[names[0]]
        if stacked and any(type(data[v]) is not type(node) or data[v].size != node.size for v in names):
            raise DataError(f"stacked batch for {names[0]!r}..: the nodes differ in kind or size; feed them apart")

    # ------------------------------------------------------------------ step
    def forward(self, batch: Mapping | None = None) -> StepResult:
        """Run the forward pass (and the losses) only."""
        if batch is not None:
            self.feed(batch)
        if self.buf is None:
            raise DataError("no batch has been fed")
        for g, t in self.wt.items():
            np.copyto(t, self.params[g].T)
        for st, b in zip(self.plan.stacks, self.buf.stacks):
            RUNNERS[st.kind].forward(self, st, b)
        return self._result()

    def _result(self) -> StepResult:
        total = 0.0
        for st in self._losses:
            s = float(self.buf.stacks[st.id].loss.sum(dtype=np.float64))
            total += s / self.buf.B if st.node.reduction == "mean" else s
        return StepResult(total, self)

    def losses(self) -> dict:
        """The value of every loss node at the last forward pass (reduced over the batch)."""
        out = {}
        for st in self._losses:
            per = self.buf.stacks[st.id].loss.sum(axis=1, dtype=np.float64)
            if st.node.reduction == "mean":
                per = per / self.buf.B
            out.update(zip(st.members, per.tolist()))
        return out

    def step(self, batch: Mapping | None = None, *, update_forward: bool = True,
             update_inverse: bool = True, apply: bool = True) -> StepResult:
        """One training step: forward, targets, local gradients, updates.

        ``update_forward=False`` trains only the inverses (the warm-up) and
        skips the target pass. ``apply=False`` computes everything (targets,
        ``grads``) but changes no parameter.
        """
        result = self.forward(batch)
        for impl in self._inverse_refresh:  # e.g. the analytic inverse's matrix, from the live weights
            impl.refresh(self)
        stacks, bufs = self.plan.stacks, self.buf.stacks
        self._written.clear()
        if update_forward:
            # displacement buffers start at zero: the first proposal that covers a whole
            # stack is copied in, any other is added after zeroing (see deliver / ready_d)
            dirty = self._d_dirty
            for i in range(len(dirty)):
                dirty[i] = True
            for st, b in zip(reversed(stacks), reversed(bufs)):
                if b.d is not None and dirty[st.id]:
                    b.d.fill(0)
                    dirty[st.id] = False
                RUNNERS[st.kind].propose(self, st, b)
            for st, b in zip(stacks, bufs):
                RUNNERS[st.kind].grads(self, st, b)
        if update_inverse:
            for st, b in zip(stacks, bufs):
                RUNNERS[st.kind].inverse_grads(self, st, b)
        if apply:
            self._apply(update_forward, update_inverse)
            self.step_count += 1
        if self.check_finite and not np.isfinite(result.loss):
            raise DivergenceError(f"step {self.step_count}: the loss is not finite ({result.loss})",
                                  step=self.step_count, quantity="loss")
        self._last = (update_forward, update_inverse)
        return result

    def _apply(self, update_forward: bool, update_inverse: bool) -> None:
        moving = []
        for g in self._written:
            if (g in self.inverse_groups and not update_inverse) or (g in self.forward_groups and not update_forward) \
                    or self.group_options[g]["frozen"]:
                continue
            moving.append(g)
        # first pass: keep each moving group's old value and, before any group moves, refuse a
        # non-finite gradient (a divergence then leaves the parameters whole)
        for g in moving:
            if not kd.snapshot(self.params[g], self.grads[g], self.updates[g]) and self.check_finite:
                raise DivergenceError(self._diagnose(g), step=self.step_count + 1, quantity=self._culprit)
        for g in moving:
            p = self.params[g]
            grad = self.grads[g]
            scale = self.group_options[g]["scale"]
            if scale != 1.0:  # keep grads as computed (for inspection); scale a copy
                grad = np.multiply(grad, scale, out=self._gtmp[g])
            self.optimizers[g].step_trusted(p, grad)
            if not kd.difference(p, self.updates[g]) and self.check_finite:
                raise DivergenceError(self._diagnose(g), step=self.step_count + 1, quantity=self._culprit)
        if len(moving) != len(self.updates):
            for g in set(self.updates) - set(moving):
                self.updates[g].fill(0)

    def _diagnose(self, group: str) -> str:
        """Name the first non-finite quantity of this step (only called once things went wrong)."""
        step = self.step_count + 1
        for st, b in zip(reversed(self.plan.stacks), reversed(self.buf.stacks)):
            if b.d is not None and not kd.all_finite(b.d):
                k = next(k for k in range(st.m) if not kd.all_finite(b.d[k]))
                self._culprit = f"target of {st.members[k]}"
                return f"step {step}: the target of node {st.members[k]!r} is not finite (parameter group {group!r} then was)"
        if not kd.all_finite(self.grads[group]):
            self._culprit = f"gradient of {group}"
            return f"step {step}: the gradient of parameter group {group!r} is not finite"
        self._culprit = group
        return f"step {step}: parameter group {group!r} became non-finite (the update overflowed)"

    # ------------------------------------------------------------------ helpers for runners
    def grad_target(self, group: str) -> np.ndarray:
        """The gradient buffer of ``group``, zeroed on its first use in this step."""
        g = self.grads[group]
        if group not in self._written:
            g.fill(0)
            self._written.add(group)
        return g

    def add_grad(self, group: str, a: np.ndarray, b: np.ndarray) -> None:
        """``grad[group] += a @ b`` (written directly on the group's first use this step)."""
        if group not in self._written:
            np.dot(a, b, out=self.grads[group])
            self._written.add(group)
        else:
            tmp = self._gtmp[group]
            np.dot(a, b, out=tmp)
            self.grads[group] += tmp

    def scratch(self, key, shape) -> np.ndarray:
        """A scratch array of the graph's dtype for ``key`` (a rule's or kind's own), made once per shape."""
        arr = self._scratch.get(key)
        if arr is None or arr.shape != tuple(shape):
            arr = self._scratch[key] = np.zeros(shape, dtype=self.graph.dtype)
        return arr

    def deliver(self, st, slot, sb) -> None:
        """Add a slot's proposals (displacements) into its sources' displacement buffers."""
        dst = self.buf.stacks[slot.src].d
        dirty = self._d_dirty
        p = sb.p if slot.deliver_scale is None else self._scaled(slot, sb.p)  # a weighted merge's weights
        if isinstance(slot.rows, slice):
            if dirty[slot.src] and slot.rows.stop - slot.rows.start == dst.shape[0]:
                np.copyto(dst, p)  # first to arrive and covering every member: no zero-fill, no add
            else:
                if dirty[slot.src]:
                    dst.fill(0)
                dst[slot.rows] += p
        else:
            if dirty[slot.src]:
                dst.fill(0)
            kd.scatter_rows_add(dst, slot.rows, p)
        dirty[slot.src] = False

    def _scaled(self, slot, p: np.ndarray) -> np.ndarray:
        """``p`` times the slot's per-member delivery scale (a weighted merge), in a scratch array."""
        key = (id(slot), p.shape)
        entry = self._scale_scratch.get(key)
        if entry is None:
            entry = self._scale_scratch[key] = (slot.deliver_scale.astype(p.dtype).reshape(-1, 1, 1),
                                                np.empty_like(p))
        scale, out = entry
        np.multiply(p, scale, out=out)
        return out

    def deliver_member(self, sid: int, member: int, p: np.ndarray, scale: float = 1.0) -> None:
        """Add one proposal (a chain head's, to its initial input) into member ``member`` of stack ``sid``."""
        dst = self.buf.stacks[sid].d
        if self._d_dirty[sid]:
            dst.fill(0)
            self._d_dirty[sid] = False
        if scale != 1.0:
            dst[member] += dst.dtype.type(scale) * p
        else:
            dst[member] += p

    def finalize_merge(self, st, b, members) -> None:
        """Turn accumulated displacements into merged ones for the given members."""
        kind = st.merge_kind
        if kind in ("linear", "weighted") or b.d is None:  # weighted: scaled as delivered
            return
        if kind == "jit":
            jm = self.jit_merges[st.id]
            idx = self._all_members[st.id] if isinstance(members, range) and len(members) == st.m \
                else np.asarray(list(members), dtype=np.int64)
            zeros = self._zero_blocks.get(b.d.shape[1:])
            if zeros is None:
                zeros = self._zero_blocks[b.d.shape[1:]] = np.zeros(b.d.shape[1:], dtype=b.d.dtype)
            kd.merge_members(jm.fn, jm.params, b.h, b.d, zeros, idx)
            return
        if kind == "mean":
            if isinstance(members, range) and len(members) == st.m:
                b.d *= b.inv_count3
            else:
                for k in members:
                    b.d[k] *= b.inv_count[k]
            return
        fn = get_merge(st.merge)
        want_node, want_sources = wants_context(fn)
        for k in members:
            incoming = st.incoming[k]
            if not incoming:
                b.d[k].fill(0)
                continue
            h = b.h[k]
            taus = [h + self.buf.stacks[cs].slots[si].p[ck] for cs, si, ck in incoming]
            context = {}
            if want_node:
                context["node"] = st.members[k]
            if want_sources:
                context["sources"] = [self.plan.stacks[cs].members[ck] for cs, si, ck in incoming]
            out = np.asarray(fn(h.copy(), taus, **context))
            if out.shape != h.shape:
                raise GraphError(f"merge {st.merge!r} returned shape {out.shape} for node {st.members[k]!r}, "
                                 f"expected {h.shape}")
            np.subtract(out, h, out=b.d[k])

    def loss_scratch(self, st, b):
        key = (st.id, self.buf.B)
        if key not in self._loss_scratch:
            n = st.slots[0].src_size
            self._loss_scratch[key] = np.zeros((st.m * self.buf.B, n), dtype=self.graph.dtype)
        return self._loss_scratch[key]

    # ------------------------------------------------------------------ looking inside
    def _locate(self, name):
        if self.buf is None:
            raise DataError("no step has run yet")
        try:
            sid, k = self.plan.where[name]
        except KeyError:
            raise GraphError(f"graph {self.graph.name!r} has no node {name!r}") from None
        return self.plan.stacks[sid], self.buf.stacks[sid], k

    def value(self, name: str) -> np.ndarray:
        """The forward value of node ``name`` (``[B, n]``; ``[B]`` for integer data; per-sample loss for losses)."""
        st, b, k = self._locate(name)
        if st.node.is_loss:
            return b.loss[k].copy()
        return b.h[k].copy()

    def probabilities(self, name: str) -> np.ndarray:
        """``softmax`` of a softmax output's logits."""
        z = self.value(name)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def displacement(self, name: str) -> np.ndarray:
        """``h_hat - h`` of node ``name`` after the last step's target pass (zeros if it gets no target)."""
        st, b, k = self._locate(name)
        if b.d is None:
            shape = b.h[k].shape
            return np.zeros(shape, dtype=self.graph.dtype)
        return b.d[k].copy()

    def target(self, name: str) -> np.ndarray:
        """The merged target ``h_hat`` of node ``name``."""
        st, b, k = self._locate(name)
        return b.h[k] + self.displacement(name)

    def proposal(self, source: str, consumer: str) -> np.ndarray:
        """The target ``tau`` that edge ``source -> consumer`` proposed for ``source``."""
        st, b, k = self._locate(consumer)
        cnode = self.graph.node(consumer)
        if source not in cnode.inputs:
            raise GraphError(f"there is no edge {source!r} -> {consumer!r}")
        i = cnode.inputs.index(source)
        slot, sb = st.slots[i], b.slots[i]
        if not slot.propose or sb.p is None or (slot.recurrent and k == 0 and not st.propose_init):
            raise GraphError(f"edge {source!r} -> {consumer!r} carries no credit (rule {slot.rule!r}, "
                             f"or {source!r} needs no target)")
        if slot.cut is not None and slot.cut[k]:
            raise GraphError(f"edge {source!r} -> {consumer!r} is cut (Graph.cut): it carries no credit")
        _, sbuf, j = self._locate(source)
        return sbuf.h[j] + sb.p[k]

    def proposals(self, name: str) -> dict:
        """Every proposal node ``name`` received, by consumer."""
        st, b, k = self._locate(name)
        out = {}
        for cs, si, ck in st.incoming[k]:
            consumer = self.plan.stacks[cs].members[ck]
            out[consumer] = self.proposal(name, consumer)
        return out

    def local_loss(self, name: str) -> float:
        """``1/2 ||f(inputs) - h_hat||^2`` of a parametric node, summed over the batch."""
        d = self.displacement(name)
        return 0.5 * float(np.sum(d.astype(np.float64) ** 2))

    def local_losses(self) -> dict:
        """Local losses of all parametric nodes."""
        out = {}
        for st, b in zip(self.plan.stacks, self.buf.stacks):
            if isinstance(st.node, Dense) and b.d is not None:
                kd.sum_squares(b.d, b.local)
                out.update(zip(st.members, b.local.tolist()))
        return out

    def reconstruction_losses(self) -> dict:
        """The loss each trained inverse optimised at the last step, summed over the batch.

        For an inverse with ``loss="reconstruction"``: ``1/2 ||g(f(h_u)) -
        h_u||^2``, or with noise ``1/2 ||g(f(h_u + eps)) - (h_u + eps)||^2``
        (the corrupted input, as trained); with ``loss="difference"``: ``1/2
        ||g(f(h_u + eps)) - g(f(h_u)) - eps||^2``. So the two objectives'
        values are not comparable with each other.
        Keyed by ``(node, input)``: a node may carry inverses for several inputs.
        """
        out = {}
        for st, b in zip(self.plan.stacks, self.buf.stacks):
            for slot, sb in zip(st.slots, b.slots):
                if sb.recon is not None:
                    for v, r in zip(st.members, sb.recon.tolist()):
                        out[(v, self.graph.node(v).inputs[slot.index])] = r
        return out

    def reconstruction_loss(self) -> float:
        """Total reconstruction loss of all inverses at the last step, per sample."""
        return float(sum(self.reconstruction_losses().values())) / max(self.buf.B, 1)

    def stacked_values(self, names) -> np.ndarray:
        """Values of several nodes as one array ``[len(names), B, ...]`` (a view when they form a stack)."""
        names = tuple(names)
        sid, k0 = self.plan.where[names[0]]
        st = self.plan.stacks[sid]
        if tuple(st.members[k0:k0 + len(names)]) == names:
            return self.buf.stacks[sid].h[k0:k0 + len(names)]
        return np.stack([self.value(n) for n in names])

