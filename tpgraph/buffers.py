"""Preallocated arrays of one plan at one batch size.

Everything the per-batch loop writes lives here, allocated once: values
``H [m, B, n]`` per stack (an extended ``Hext [m+1, B, n]`` for chains, whose
row 0 holds the chain's initial input), displacements ``D`` (target minus
value), ``delta`` (``D * act'``, then the local-loss gradient at the
pre-activation), per-slot proposals ``P`` (the displacement each credit edge
proposes to its source), gathered inputs, and the inverse's buffers. 2-D views
(``[m*B, n]``) are made here too, so the loop never reshapes.
"""

from __future__ import annotations

import numpy as np

from .inverse_losses import LOSS_BUFFERS
from .nodes import Dense, IndexInput
from .plan import Plan, Stack


def _context_preact(plan: Plan, slot) -> bool:
    """A joint inverse trained with noise whose siblings are not linear: their pre-activations need a buffer."""
    return slot.inverse.noise > 0 and plan.stacks[slot.context.src].node.act != "identity"


def _2d(a):
    return a.reshape(-1, a.shape[-1])


def _pair(shape, dtype):
    """A zeroed ``[m, B, n]`` array and its ``[m*B, n]`` view."""
    a = np.zeros(shape, dtype=dtype)
    return a, _2d(a)


class SlotBuffers:
    """Arrays of one input slot of a stack."""

    # the arrays an inverse loss may ask for (tpgraph.inverse_losses.LOSS_BUFFERS) come last, each with its 2-D view
    __slots__ = ("x", "x2", "x1", "gathered", "p", "p2", "og", "og2", "gf", "gf2", "dg", "dg2",
                 "recon", "noise", "xn", "xn2", "fn", "fn2", "gn", "gn2", "aj", "aj2", "ready",
                 "cy", "cy2", "cz", "cz2", "ogt", "ogt2", "cpre", "cpre2", "fh", "fh2") + tuple(
        name + view for name in LOSS_BUFFERS for view in ("", "2"))

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, None)


class StackBuffers:
    """Arrays of one stack."""

    def __init__(self, st: Stack, plan: Plan, B: int, dtype, stacks_buf: list["StackBuffers"]):
        m, n = st.m, st.size
        node = st.node
        self.stack = st
        self.hext = None
        if isinstance(node, IndexInput):
            self.h = np.zeros((m, B), dtype=np.int64)
            self.h1 = self.h.reshape(-1)
            self.h2 = None
        elif st.chain:
            self.hext = np.zeros((m + 1, B, n), dtype=dtype)
            self.h = self.hext[1:]
            self.h2 = _2d(self.h)
            self.hprev2 = _2d(self.hext[:-1])
        else:
            self.h = np.zeros((m, B, n), dtype=dtype)
            self.h2 = _2d(self.h)
        self.d = np.zeros((m, B, n), dtype=dtype) if st.needs_target else None
        self.d2 = _2d(self.d) if self.d is not None else None
        self.delta = None
        if isinstance(node, Dense):
            self.delta = np.zeros((m, B, n), dtype=dtype)
            self.delta2 = _2d(self.delta)
            self.z2 = np.zeros((m * B, n), dtype=dtype)  # scratch for multi-input sums
            self.colsum = np.zeros(n, dtype=dtype)  # bias-gradient scratch of a node without bias
            self.tmp = np.zeros((B, n), dtype=dtype)
            if st.chain:
                self.a = np.zeros((m, B, n), dtype=dtype)
                self.a2 = _2d(self.a)
        self.loss = np.zeros((m, B), dtype=dtype) if node.is_loss else None
        self.local = np.zeros(m, dtype=np.float64)
        inv = np.ones(m, dtype=dtype)
        if st.counts is not None and st.merge == "mean":
            inv = np.where(st.counts > 0, 1.0 / np.maximum(st.counts, 1), 1.0).astype(dtype)
        elif st.merge_scale is not None:  # a weighted merge: the scale of the scan's own path
            inv = st.merge_scale.astype(dtype)
        self.inv_count = inv
        self.inv_count3 = inv.reshape(m, 1, 1)
        self.ones = np.ones(m, dtype=dtype)
        self.zero_bias = np.zeros(n, dtype=dtype)
        self.slots: list[SlotBuffers] = []
        for slot in st.slots:
            sb = SlotBuffers()
            plan.stacks[slot.src]
            ns = slot.src_size
            if slot.recurrent:
                sb.x = self.hext[:-1]
            elif isinstance(slot.rows, slice):
                sb.x = stacks_buf[slot.src].h[slot.rows]
            else:
                sb.gathered = True
                sb.x = np.zeros((m,) + stacks_buf[slot.src].h.shape[1:], dtype=stacks_buf[slot.src].h.dtype)
            if slot.src_is_index:
                sb.x1 = sb.x.reshape(-1)
            else:
                sb.x2 = _2d(sb.x)
            if slot.propose:
                if st.kind == "add":
                    # the gradient of a sum passes the displacement through unchanged
                    sb.p, sb.p2 = self.d, self.d2
                else:
                    sb.p, sb.p2 = _pair((m, B, ns), dtype)
            if slot.inverse is not None and slot.credit.needs_inverse:
                sb.og, sb.og2 = _pair((m, B, slot.inverse.impl.og_size(ns, n)), dtype)
                sb.gf, sb.gf2 = _pair((m, B, ns), dtype)
                sb.dg, sb.dg2 = _pair((m, B, ns), dtype)
                sb.recon = np.zeros(m, dtype=np.float64)
                if slot.inverse.impl.has_features:  # phi(h_v), the adjoint inverse's input
                    sb.fh, sb.fh2 = _pair((m, B, n), dtype)
                if slot.inverse.noise > 0:
                    sb.noise = np.zeros((m, B, ns), dtype=dtype)
                    sb.xn, sb.xn2 = _pair((m, B, ns), dtype)
                    sb.fn, sb.fn2 = _pair((m, B, n), dtype)
                    sb.gn, sb.gn2 = _pair((m, B, ns), dtype)
                    sb.aj, sb.aj2 = _pair((m, B, n), dtype)
                # what the inverse's objective needs beyond these (tpgraph.inverse_losses)
                for name, width in slot.inverse.loss_impl.buffers(n, ns).items():
                    a, a2 = _pair((m, B, width), dtype)
                    setattr(sb, name, a)
                    setattr(sb, name + "2", a2)
            ctx = slot.context
            if ctx is not None:  # a joint inverse: its siblings' values, targets (noisy values), og at the targets
                sb.cy, sb.cy2 = _pair((m, B, ctx.size), dtype)
                sb.cz, sb.cz2 = _pair((m, B, ctx.size), dtype)
                sb.ogt, sb.ogt2 = _pair((m, B, slot.inverse.impl.og_size(ns, n)), dtype)
                if _context_preact(plan, slot):
                    sb.cpre, sb.cpre2 = _pair((plan.stacks[ctx.src].m, B, ctx.size), dtype)
            self.slots.append(sb)


class Buffers:
    """All arrays of a plan at batch size ``B``."""

    def __init__(self, plan: Plan, B: int, dtype):
        self.B = B
        self.stacks: list[StackBuffers] = []
        for st in plan.stacks:
            self.stacks.append(StackBuffers(st, plan, B, dtype, self.stacks))

    @property
    def nbytes(self) -> dict[str, int]:
        """Bytes held, by dtype name: every array that owns its memory, once (views cost nothing)."""
        seen, out = set(), {}
        for sbuf in self.stacks:
            for holder in [sbuf, *sbuf.slots]:
                names = holder.__slots__ if isinstance(holder, SlotBuffers) else vars(holder)
                for name in names:
                    a = getattr(holder, name)
                    if isinstance(a, np.ndarray) and a.base is None and id(a) not in seen:
                        seen.add(id(a))
                        out[a.dtype.name] = out.get(a.dtype.name, 0) + a.nbytes
        return out


def buffer_bytes(plan: Plan, B: int, dtype) -> dict[str, int]:
    """What :class:`Buffers` will allocate for ``plan`` at batch size ``B``: bytes by dtype name.

    Computed from the plan's shapes without allocating anything; it follows
    :class:`StackBuffers` array by array (views, such as a chain's ``h`` in
    its ``hext``, an add's proposal in its displacement, or a slice of a
    source stack, cost nothing), and the tests hold it equal to
    :attr:`Buffers.nbytes`. Keep the two in step.
    """
    real, f64, i64 = np.dtype(dtype), np.dtype(np.float64), np.dtype(np.int64)
    out = {real.name: 0, f64.name: 0, i64.name: 0}

    def add(dt, *shape):
        out[dt.name] += int(np.prod(shape, dtype=np.int64)) * dt.itemsize

    for st in plan.stacks:
        m, n, node = st.m, st.size, st.node
        if isinstance(node, IndexInput):
            add(i64, m, B)
        else:
            add(real, m + 1 if st.chain else m, B, n)  # h (hext for a chain)
        if st.needs_target:
            add(real, m, B, n)  # d
        if isinstance(node, Dense):
            add(real, 3 if st.chain else 2, m, B, n)  # delta, z2, and a for a chain
            add(real, n + B * n)  # colsum, tmp
        if node.is_loss:
            add(real, m, B)
        add(f64, m)  # local
        add(real, 2 * m + n)  # inv_count, ones, zero_bias
        for slot in st.slots:
            ns = slot.src_size
            if not slot.recurrent and not isinstance(slot.rows, slice):  # gathered inputs
                src = plan.stacks[slot.src]
                if isinstance(src.node, IndexInput):
                    add(i64, m, B)
                else:
                    add(real, m, B, src.size)
            if slot.propose and st.kind != "add":
                add(real, m, B, ns)  # p
            if slot.inverse is not None and slot.credit.needs_inverse:
                add(real, 2, m, B, ns)  # gf, dg
                add(real, m, B, slot.inverse.impl.og_size(ns, n))  # og
                add(f64, m)  # recon
                if slot.inverse.impl.has_features:
                    add(real, m, B, n)  # fh
                if slot.inverse.noise > 0:
                    add(real, 3, m, B, ns)  # noise, xn, gn
                    add(real, 2, m, B, n)  # fn, aj
                for width in slot.inverse.loss_impl.buffers(n, ns).values():
                    add(real, m, B, width)
            ctx = slot.context
            if ctx is not None:
                add(real, 2, m, B, ctx.size)  # cy, cz
                add(real, m, B, slot.inverse.impl.og_size(ns, n))  # ogt
                if _context_preact(plan, slot):
                    add(real, plan.stacks[ctx.src].m, B, ctx.size)  # cpre
    return {k: v for k, v in out.items() if v}
